"""What prlctl and prlsrvctl print, read into facts, progress and outcomes (fixtures: see
tests/unit/fixtures/prlctl/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.builders import host_facts, spec, ve
from vemigrate.api.checks import CheckName, CheckResult
from vemigrate.api.host import VEKind
from vemigrate.api.migration import Mode
from vemigrate.core import checks
from vemigrate.core.access import HostAccess
from vemigrate.core.observation import ErrorClass, VEFacts, VEState
from vemigrate.core.plan import Plan, resolve
from vemigrate.drivers import prlctl_output as out
from vemigrate.drivers.prlctl import enter_sessions, host_status, progress_stats
from vemigrate.drivers.protocol import MigrationPlan

FIXTURES = Path(__file__).parent / "fixtures" / "prlctl"
VM_UUID = "3f1c2a9e-8d7b-4c1e-9a55-0e6f6d1b2c3d"
CT_UUID = "5a0e8d9c-4b1f-4f7a-8c6d-2e3f4a5b6c7d"
MIB = 1024 * 1024
ACCESS = HostAccess(name="node-a", namespace="ns", address="192.0.2.1", driver="prlctl")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode()


def test_list_json_gives_vm_and_container_facts() -> None:
    vm, ct = out.parse_list(fixture("list-a-i-j.json"))
    assert vm.facts.name == "web1" and vm.facts.uuid == VM_UUID
    assert (vm.facts.type, vm.facts.state) == (VEKind.VM, VEState.RUNNING)
    assert vm.facts.memory_bytes == 2048 * MIB
    assert vm.facts.vcpus == 2
    assert vm.facts.bridges == ("Bridged", "Backend")
    assert vm.facts.macs == ("00:1c:42:ab:12:cd", "00:1c:42:ab:12:ce")
    assert vm.images == (
        f"/vz/vmprivate/{VM_UUID}/harddisk.hdd",
        f"/vz/vmprivate/{VM_UUID}/data.hdd",
    )
    assert vm.home == f"/vz/vmprivate/{VM_UUID}"
    assert vm.facts.guest_os_installed is True
    assert (ct.facts.type, ct.facts.state) == (VEKind.CONTAINER, VEState.STOPPED)
    assert ct.facts.vcpus == 1  # "unlimited"
    assert ct.facts.bridges == ("Bridged",)  # venet0 is routed: no bridge
    assert ct.home == f"/vz/private/{CT_UUID}"
    assert ct.facts.nfs_server is True  # "Features": "... nfsd:on "
    assert vm.facts.nfs_server is None  # VMs have no container features


@pytest.mark.parametrize(
    ("features", "on"),
    [("sysfs:on nfs:off nfsd:off time:off ", False), ("nfsd:on ", True), ("sysfs:on nfs:on ", None), ("", None)],
)
def test_the_nfs_server_feature_is_read_from_features(features: str, on: bool | None) -> None:
    assert out.nfs_server(features) is on


def test_inside_a_container_ipsec_and_nfs_are_read() -> None:
    quiet = "ike_daemons 0\nnfs_mounts 0\nnfs_remote_locks 0\nnfs_overmounted 0\nnfs_open_devices 0\n"
    ipsec, nfs = out.inside_container(quiet)
    assert ipsec is False and nfs is not None and not nfs.client
    ipsec, _ = out.inside_container(quiet.replace("ike_daemons 0", "ike_daemons 1"))
    assert ipsec is True
    ipsec, _ = out.inside_container(quiet + "xfrm_states 2\n")
    assert ipsec is True  # security associations without a daemon (set up by hand, say)
    busy = "ike_daemons 0\nnfs_mounts 2\nnfs_remote_locks 1\nnfs_overmounted 1\nnfs_open_devices 3\n"
    _, nfs = out.inside_container(busy)
    assert nfs is not None
    assert (nfs.client, nfs.remote_locks, nfs.overmounted, nfs.open_device_files) == (True, True, True, 3)
    assert out.inside_container("") == (None, None)  # nothing printed: the checks say Skipped
    assert out.inside_container("bash: /bin/sh: No such file or directory\n") == (None, None)


def test_nfs_facts_from_a_container_fail_the_live_check_with_what_to_do() -> None:
    said = "ike_daemons 0\nnfs_mounts 1\nnfs_remote_locks 1\nnfs_overmounted 1\nnfs_open_devices 2\n"
    ipsec, nfs = out.inside_container(said)
    ct = ve(type=VEKind.CONTAINER, state=VEState.RUNNING, bridges=(), nfs=nfs, ipsec=ipsec, nfs_server=False)
    src = host_facts()
    results = checks.run_checks(
        checks.CheckInput(
            spec=spec(), plan=live(ct), ve=ct, source=src, target=host_facts(), target_ve=None, ssh_port_open=True
        )
    )
    verdict = {r.name: r for r in results}
    assert verdict[CheckName.NFS_CLIENT].result == CheckResult.FAILED
    assert "2 block or character device file(s)" in verdict[CheckName.NFS_CLIENT].message
    assert "remote file locking and over-mounted" in verdict[CheckName.NFS_CLIENT].message
    assert verdict[CheckName.IPSEC].result == CheckResult.PASSED
    assert verdict[CheckName.NFS_SERVER].result == CheckResult.PASSED


@pytest.mark.parametrize("name", ["web1", VM_UUID, "{" + VM_UUID + "}", VM_UUID.upper()])
def test_a_ve_is_found_by_name_or_uuid(name: str) -> None:
    entries = out.parse_list(fixture("list-a-i-j.json"))
    assert [e.facts.name for e in entries if e.matches(name)] == ["web1"]


def test_list_that_is_not_json_is_an_error() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        out.parse_list("Unable to connect to Virtuozzo")
    assert out.parse_list("") == []


@pytest.mark.parametrize(("name", "count"), [("snapshot-list.txt", 2), ("snapshot-list-empty.txt", 0)])
def test_snapshots_are_counted(name: str, count: int) -> None:
    assert out.count_snapshots(fixture(name)) == count


def test_server_info_and_networks() -> None:
    info = out.parse_server_info(fixture("prlsrvctl-info-full-j.json"))
    assert info.vm_home == "/vz/vmprivate"
    assert info.version == "Server 7.0.200-1234"
    assert info.cpu_model is not None and info.cpu_model.startswith("Intel(R) Xeon(R)")
    assert "avx512f" in info.cpu_features and "sse4_2" in info.cpu_features
    assert not [f for f in info.cpu_features if "=" in f or f.startswith("RESERVED")]
    assert out.parse_networks(fixture("prlsrvctl-net-list-j.json")) == ["Bridged", "Backend"]


SHELL = """cpuid_override no
nested no
vendor GenuineIntel
cpus 32
memtotal 135034974208
memfree 101034974208
df 1   4000000000000 8000000000000 ext4
df 2   4000000000000 8000000000000 ext4
addr eth0 192.0.2.1/24
speed eth0 10000
speed lo -1
clock 1764072000000000000
kernel 3.10.0-1160.80.1.vz7.191.4
release Virtuozzo release 7.0.14 (247)
"""
PATHS = ["/vz/vmprivate", "/vz/private", "/"]


def test_host_status_from_prlsrvctl_and_the_shell() -> None:
    info = out.parse_server_info(fixture("prlsrvctl-info-full-j.json"))
    nets = out.parse_networks(fixture("prlsrvctl-net-list-j.json"))
    status = host_status(info, nets, SHELL, 1764072000000000000 - 5_000_000, ACCESS, PATHS)
    assert status.cpu is not None and status.cpu.vendor == "GenuineIntel" and status.cpu.count == 32
    assert status.memory_free_bytes == 101034974208
    assert [(s.path, s.shared) for s in status.storage] == [("/vz/vmprivate", False), ("/vz/private", False)]
    assert status.network is not None and status.network.bridges == ["Backend", "Bridged"]
    assert status.network.link_speed_mbps == 10000
    assert status.time_offset_ms == 5
    assert (status.cpuid_override, status.nested) == (False, False)
    assert status.version is not None and status.version.product == "Virtuozzo release 7.0.14 (247)"
    assert status.default_path == "/vz/vmprivate"
    assert status.ve_types == [VEKind.VM, VEKind.CONTAINER]


def test_no_cpuid_override_fails_the_live_container_check() -> None:
    """Facts as the prlctl driver reads them (no /proc/vz/cpuid_override, not nested) fail the seed's rule."""
    info = out.parse_server_info(fixture("prlsrvctl-info-full-j.json"))
    status = host_status(info, [], SHELL, 0, ACCESS, PATHS)
    ct = ve(type=VEKind.CONTAINER, state=VEState.RUNNING, bridges=())
    results = checks.run_checks(
        checks.CheckInput(
            spec=spec(), plan=live(ct), ve=ct, source=status, target=host_facts(), target_ve=None, ssh_port_open=True
        )
    )
    verdict = next(r for r in results if r.name == CheckName.CPUID_OVERRIDE)
    assert verdict.result == CheckResult.FAILED
    assert "source node-a lacks /proc/vz/cpuid_override" in verdict.message
    nested = host_status(info, [], SHELL.replace("nested no", "nested yes"), 0, ACCESS, PATHS)
    results = checks.run_checks(
        checks.CheckInput(
            spec=spec(), plan=live(ct), ve=ct, source=nested, target=host_facts(), target_ve=None, ssh_port_open=True
        )
    )
    assert next(r for r in results if r.name == CheckName.CPUID_OVERRIDE).result == CheckResult.PASSED


def test_virtuozzo6_source_is_recognised_for_the_6_to_7_rules() -> None:
    info = out.parse_server_info(fixture("prlsrvctl-info-full-j.json"))
    status = host_status(info, [], SHELL.replace("7.0.14 (247)", "6.0.11 (3466)"), 0, ACCESS, PATHS)
    assert checks.is_virtuozzo6(status)


# -- progress and outcome ---------------------------------------------------------------------
def test_progress_lines_read_from_a_pty_log() -> None:
    assert out.last_percent(fixture("migrate-vm-running.log")) == 42
    assert out.last_percent(fixture("migrate-vm-live-ok.log")) == 100
    assert out.last_percent(fixture("migrate-ct-snapshots.log")) is None
    lines = out.output_lines(fixture("migrate-vm-running.log"))
    assert lines[0] == "Migrate the VM web1 on 192.0.2.2  (/vz/vmprivate2)"
    assert lines[1:3] == ["Operation progress ... 0%", "Operation progress ... 3%"]


def plan(mode: Mode = Mode.LIVE) -> MigrationPlan:
    target = HostAccess(name="node-b", namespace="ns", address="192.0.2.2", driver="prlctl")
    v = ve(memory_bytes=1024 * MIB, disk_bytes=3072 * MIB)
    wanted = spec(mode=mode.value)
    return MigrationPlan.of("u1", wanted, resolve("u1", wanted, v, None, None), v, ACCESS, target)


def live(v: VEFacts) -> Plan:
    return resolve("u1", spec(mode="Live"), v, host_facts(), None)


def test_progress_is_the_percentage_of_what_moves() -> None:
    live = progress_stats(plan(Mode.LIVE), fixture("migrate-vm-running.log"))
    assert live.bytes_total == 4096 * MIB  # disks and memory
    assert live.bytes_processed == 4096 * MIB * 42 // 100
    assert live.bytes_remaining == 4096 * MIB - live.bytes_processed
    offline = progress_stats(plan(Mode.OFFLINE), fixture("migrate-vm-running.log"))
    assert offline.bytes_total == 3072 * MIB  # disks only
    done = progress_stats(plan(Mode.OFFLINE), "", done=True)
    assert done.bytes_processed == done.bytes_total
    assert progress_stats(plan(), "Migrate the VM web1 on 192.0.2.2  ()\r\n").bytes_processed is None


@pytest.mark.parametrize(
    ("exit_status", "log", "reason", "error_class", "cancelled", "says"),
    [
        (255, "migrate-vm-cancelled.log", "Aborted", ErrorClass.PERMANENT, True, "cancelled by the user"),
        (255, "migrate-vm-network.log", "MigrationFailed", ErrorClass.RETRYABLE, False, "connection timed out"),
        (255, "migrate-ct-snapshots.log", "MigrationFailed", ErrorClass.PERMANENT, False, "has snapshots"),
        (1, "migrate-usage-changesid.log", "InvalidArguments", ErrorClass.PERMANENT, False, "--clone only"),
        (255, "migrate-not-found.log", "MigrationFailed", ErrorClass.PERMANENT, False, "does not exist"),
        (253, "migrate-not-found.log", "DispatcherUnavailable", ErrorClass.RETRYABLE, False, "dispatcher"),
        (254, "migrate-not-found.log", "VEFrozen", ErrorClass.RETRYABLE, False, "frozen"),
        (137, "migrate-vm-running.log", "JobKilled", ErrorClass.RETRYABLE, False, "signal 9"),
    ],
)
def test_exit_codes_are_classified(
    exit_status: int, log: str, reason: str, error_class: ErrorClass, cancelled: bool, says: str
) -> None:
    outcome = out.classify_exit(exit_status, fixture(log))
    assert (outcome.reason, outcome.error_class, outcome.aborted) == (reason, error_class, cancelled)
    assert says in outcome.message


def test_error_lines_skip_the_deprecation_warning_and_progress() -> None:
    assert out.error_lines(fixture("migrate-vm-cancelled.log")) == [
        "Failed to migrate the VM: Operation was cancelled by the user."
    ]
    assert out.succeeded(fixture("migrate-vm-live-ok.log"))
    assert not out.succeeded(fixture("migrate-vm-cancelled.log"))


def test_open_enter_sessions_are_counted() -> None:
    vm, ct = out.parse_list(fixture("list-a-i-j.json"))
    ps = "\n".join(
        [
            "/usr/sbin/sshd -D",
            "prlctl enter web1",
            f"/usr/bin/prlctl enter {{{VM_UUID}}}",
            "prlctl exec web1 ls",
            f"vzctl enter {CT_UUID}",
            "grep prlctl enter web1",
        ]
    )
    assert enter_sessions(ps, vm) == 2
    assert enter_sessions(ps, ct) == 1
