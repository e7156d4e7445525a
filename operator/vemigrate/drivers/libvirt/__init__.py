"""The libvirt driver: QEMU/KVM hosts (qemu+ssh://) and Virtuozzo's libvirt driver (vz+ssh://).

How it reaches a host: one asyncssh connection with the host key verified against the host's
known_hosts Secret; libvirt-python talks to the host's libvirtd through a Unix socket forwarded over
that connection (`spec.libvirtURI`, SSH only, picks the driver: `lxc+ssh://`, `vz+ssh://`). Every
blocking libvirt call runs in a thread under a deadline: a hung call is a fact (state unknown), not
a reason to block.

How it migrates: the job is a script run detached on the source host (drivers/hostjob.py) so it
outlives the operator:
- live: `virsh migrate --live --p2p --persistent` (libvirt's virDomainMigrateToURI3 with
  VIR_MIGRATE_PEER2PEER) to `qemu+ssh://<target>/system`, which needs the source node to reach the
  target over SSH as root (the same requirement as prlctl migrate's RSA authentication between nodes).
  Encrypted by default: `--tunnelled` carries memory through libvirtd's SSH connection; local disks,
  which libvirt cannot tunnel, are copied with `--copy-storage-all` over QEMU's migration TLS
  (`--tls`), and when the hosts have no migration TLS the job refuses to start rather than copy in
  clear. `tunnel: false` is a direct QEMU stream, unencrypted.
- offline: each disk is streamed over SSH (`zstd` when compression is on), its sha256 compared on
  both ends, then the domain is defined on the target with the disks at `<path>/<UUID>/`.
- containers (libvirt LXC, `lxc+ssh://` hosts): offline only. The private area (the root file system
  directory) is streamed with tar into `<path>/<UUID>`, checked by a manifest of sha256 sums on both
  ends, and defined there; the source's private area and its configuration are then renamed with the
  `.migrated` suffix, as prlctl does, rather than deleted.
The domain carries `<vemigrate:migration uid=.../>` metadata, so the copy on the target is
recognisably this migration's.

The package, one concern a module: connection.py reaches libvirtd, facts.py reads a host's and a VE's
facts, jobs.py writes the job scripts and the target's shell scripts (pure), driver.py is `LibvirtDriver`.
"""

from __future__ import annotations

from vemigrate.drivers.libvirt.driver import LibvirtDriver
from vemigrate.drivers.libvirt.facts import unmoved_storage
from vemigrate.drivers.libvirt.jobs import completed_stats, live_argv, live_script

__all__ = ["LibvirtDriver", "completed_stats", "live_argv", "live_script", "unmoved_storage"]
