"""Lab hypervisor hosts: network + mount + UTS namespaces on this machine, each with its own
virtlogd, libvirtd and sshd, for tests and the demo. See docs/lab.md."""

from __future__ import annotations

from vemigrate_dev.lab.cli import register
from vemigrate_dev.lab.environment import Lab, LabHost, LabInfo, why_not_runnable
from vemigrate_dev.lab.vm import Heartbeats, VMInfo, VMState

__all__ = ["Heartbeats", "Lab", "LabHost", "LabInfo", "VMInfo", "VMState", "register", "why_not_runnable"]
