"""A live migration's peer connection (libvirtd's own ssh to the target, `qemu+ssh://`) never trusts a
host key the source was not given, whatever the source's ssh_config says. libvirt's ssh transport has
no way to ask for strict checking (virNetSocketNewConnectSSH passes only `-T -e none`, and
`-o BatchMode=yes` for no_tty=1), so a lax ssh_config would let it connect: under
`StrictHostKeyChecking accept-new` to a target whose key is unknown, under `StrictHostKeyChecking no` to
one whose key changed. The migration must fail with HostKeyMismatch and the VM run on where it was.

The pre-flight SSHPort check would see the bad key too; it is skipped here to stand for a key that
changes after validation (the job may start hours later, at notBefore). The VM has no disk, so
`virsh migrate` is the job's first contact with the target (a disk copy would go through the job's own
strict ssh first)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from tests.fixtures.operator import Migrations
from tests.lab.evidence import domain
from vemigrate_dev.lab import Lab, LabInfo, VMState
from vemigrate_dev.lab.host import client_config_path, known_hosts_path

Cleanup = Callable[[str], str]


@pytest.fixture
def lax_ssh(hosts: LabInfo, tmp_path: Path) -> Iterator[Callable[[str, str], None]]:
    """Loosen the ssh_config of every lab host's root (libvirtd's ssh reads it) and make lab2's key
    unknown or changed in the known_hosts it names; both files are restored afterwards."""
    config, known = client_config_path(), known_hosts_path()
    saved = config.read_bytes(), known.read_bytes()
    address = next(h.address for h in hosts.hosts if h.name == "lab2")

    def loosen(policy: str, key: str) -> None:
        lines = [line for line in saved[0].decode().splitlines() if "StrictHostKeyChecking" not in line]
        config.write_text("\n".join([*lines, f"    StrictHostKeyChecking {policy}", ""]))
        others = [line for line in saved[1].decode().splitlines() if not line.startswith(f"{address} ")]
        if key == "changed":
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
            kind, body = (tmp_path / "k.pub").read_text().split()[:2]
            others.append(f"{address} {kind} {body}")  # a key lab2 does not hold
        known.write_text("".join(f"{line}\n" for line in others))

    yield loosen
    config.write_bytes(saved[0])
    known.write_bytes(saved[1])


@pytest.mark.parametrize(("key", "policy"), [("unknown", "accept-new"), ("changed", "no")])
def test_a_live_migration_never_trusts_an_unverified_target_key(
    hosts: LabInfo,
    migrations: Migrations,
    vm_cleanup: Cleanup,
    lax_ssh: Callable[[str, str], None],
    key: str,
    policy: str,
) -> None:
    name = vm_cleanup(f"peerkey-{key}")
    vm = Lab.create_vm("lab1", name, state=VMState.STOPPED)
    virsh = ["virsh", "-q", "-c", "qemu:///system"]
    diskless = ([*virsh, "detach-disk", name, "vda", "--config"], ["rm", "-f", "--", vm.disk], [*virsh, "start", name])
    for argv in diskless:
        done = Lab.exec("lab1", argv, capture=True)
        assert done.returncode == 0, done.stderr
    running = domain(hosts, "lab1", name)
    assert running is not None and running.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    qemu_id = running.ID()
    lax_ssh(policy, key)
    spec = {"source": {"host": "lab1", "name": name}, "target": {"host": "lab2"}, "checks": {"skip": ["SSHPort"]}}
    migrations.create(name, spec)
    status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Failed", status
    assert status["mode"] == "Live"
    assert status["failure"]["reason"] == "HostKeyMismatch", status["failure"]
    source = domain(hosts, "lab1", name)
    assert source is not None and source.state()[0] == libvirt.VIR_DOMAIN_RUNNING, "the VM runs on"
    assert source.ID() == qemu_id, "the very same QEMU process: never stopped or restarted"
    assert domain(hosts, "lab2", name) is None, "nothing was started on the unverified target"
