"""What the libvirt driver reads from a domain about storage a copy cannot move, and about post-copy."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt
import pytest

from vemigrate.core.observation import JobState
from vemigrate.drivers.libvirt.facts import _in_post_copy, _post_copy_failed, live_job_state, unmoved_storage

EVERYTHING = """<domain type='kvm'>
  <name>web1</name>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram>/var/lib/libvirt/qemu/nvram/web1_VARS.fd</nvram>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='volume' device='disk'><source pool='fast' volume='data.img'/><target dev='vdc'/></disk>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='vms/web1-data'><host name='mon1' port='6789'/></source>
      <target dev='vdd' bus='virtio'/>
    </disk>
    <disk type='block' device='lun'><source dev='/dev/sdc'/><target dev='sda' bus='scsi'/></disk>
    <disk type='file' device='cdrom'>
      <source file='/srv/iso/debian-12.iso'/><target dev='sdb' bus='sata'/><readonly/>
    </disk>
    <disk type='file' device='cdrom'><target dev='sdc' bus='sata'/><readonly/></disk>
    <disk type='file' device='floppy'><source file='/srv/floppy.img'/><target dev='fda'/></disk>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
  </devices>
</domain>"""

PLAIN = """<domain type='qemu'>
  <name>web1</name>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>/boot/vmlinux</kernel></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='/var/lib/libvirt/images/web1.qcow2'/><target dev='vda'/>
    </disk>
    <disk type='file' device='cdrom'><target dev='hdc'/><readonly/></disk>
  </devices>
</domain>"""


def test_everything_a_copy_leaves_behind_is_named() -> None:
    unmovable, non_file = unmoved_storage(ET.fromstring(EVERYTHING))
    assert unmovable == (
        "NVRAM /var/lib/libvirt/qemu/nvram/web1_VARS.fd",
        "sdb: cdrom /srv/iso/debian-12.iso",
        "fda: floppy /srv/floppy.img",
        "vTPM state (swtpm)",
    )
    assert non_file == (
        "vdb: block device /dev/sdb",
        "vdc: storage pool volume fast/data.img",
        "vdd: network disk rbd://mon1:6789/vms/web1-data",
        "sda: block device /dev/sdc (lun)",
    )


def test_file_disks_and_empty_drives_move() -> None:
    assert unmoved_storage(ET.fromstring(PLAIN)) == ((), ())


@pytest.mark.parametrize(
    ("nvram", "described"),
    [
        ("<nvram type='file'><source file='/srv/nvram/web1_VARS.fd'/></nvram>", "NVRAM /srv/nvram/web1_VARS.fd"),
        ("<nvram template='/usr/share/OVMF/OVMF_VARS.fd'/>", "NVRAM"),
    ],
)
def test_nvram_in_every_form_is_unmovable(nvram: str, described: str) -> None:
    root = ET.fromstring(f"<domain><os><type>hvm</type>{nvram}</os><devices/></domain>")
    assert unmoved_storage(root) == ((described,), ())


def test_tpm_passthrough_is_named_with_its_device() -> None:
    tpm = "<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>"
    root = ET.fromstring(f"<domain><devices>{tpm}</devices></domain>")
    assert unmoved_storage(root) == (("TPM passthrough /dev/tpm0",), ())


@pytest.mark.parametrize(
    ("state", "failed"),
    [
        ([libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED], True),  # either host
        ([libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED], True),  # the target, vCPUs on
        ([libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY], False),  # post-copy under way
        ([libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY], False),
        ([libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER], False),
        ([libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED], False),
    ],
)
def test_post_copy_failure_is_read_from_the_state_reason(state: list[int], failed: bool) -> None:
    assert _post_copy_failed(state) is failed
    under_way = state[1] in (libvirt.VIR_DOMAIN_PAUSED_POSTCOPY, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY) and state[0] in (
        libvirt.VIR_DOMAIN_PAUSED,
        libvirt.VIR_DOMAIN_RUNNING,
    )
    assert _in_post_copy(state) is (under_way and not failed)


@pytest.mark.parametrize(
    ("state", "job"),
    [
        ([libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED], JobState.RUNNING),  # pre-copy
        ([libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION], JobState.SWITCHOVER),  # the last copy
        ([libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY], JobState.POST_COPY),
        # The link to the target cut in post-copy: libvirt says so before virsh returns. Read as a
        # paused, running job before, it timed out (no bytes moved) and was aborted: RollingBack.
        ([libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED], JobState.POST_COPY),
        ([libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER], JobState.RUNNING),  # a pause of its own
    ],
)
def test_a_live_job_in_or_after_post_copy_is_post_copy(state: list[int], job: JobState) -> None:
    assert live_job_state(state) == job
