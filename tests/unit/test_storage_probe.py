"""The storage paths both drivers measure reach `df` as arguments and never come back in the output:
the real facts scripts run with a local sh against real directories whose names hold what a shell,
sed or a line-based reader would take for something else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vemigrate.core.access import HostAccess
from vemigrate.drivers import hostfacts
from vemigrate.drivers import prlctl_output as out
from vemigrate.drivers.libvirt.facts import _FACTS as LIBVIRT_FACTS
from vemigrate.drivers.libvirt.facts import _host_status
from vemigrate.drivers.prlctl import _FACTS as PRLCTL_FACTS
from vemigrate.drivers.prlctl import host_status

pytestmark = pytest.mark.unit
FIXTURES = Path(__file__).parent / "fixtures" / "prlctl"
ACCESS = HostAccess(name="node-a", namespace="ns", address="192.0.2.1", driver="prlctl")

# Each a directory name (path components): a space, sed's delimiter with its `e` flag (runs a command
# in sed), `&` (sed's "the match"), a backslash, a line break followed by what reads as a fact line.
HOSTILE = [
    "vz private",
    "x|\ns/.*/touch PWNED/e\n#",
    "a&b\\1",
    "new\nnested yes\ndf 1 1 1 ext4",
]


def _dirs(tmp_path: Path) -> list[str]:
    paths = []
    for name in HOSTILE:
        d = tmp_path / "pools" / name
        d.mkdir(parents=True)
        paths.append(str(d))
    return [*paths, str(tmp_path / "absent dir"), "/"]


def _run(script: str, paths: list[str], cwd: Path) -> str:
    done = subprocess.run(["sh", "-c", script, "sh", *paths], cwd=cwd, capture_output=True, timeout=30, check=False)
    return done.stdout.decode()


def test_prlctl_probe_measures_hostile_paths_and_runs_nothing_they_hold(tmp_path: Path) -> None:
    paths = _dirs(tmp_path)
    shell = _run(PRLCTL_FACTS, paths, tmp_path)
    assert not (tmp_path / "PWNED").exists(), "a path's name ran as a command"
    assert sum(line.startswith("nested ") for line in shell.splitlines()) == 1, "a path's name passed for a fact"
    info = out.parse_server_info((FIXTURES / "prlsrvctl-info-full-j.json").read_text())
    status = host_status(info, [], shell, 0, ACCESS, paths)
    measured = [s.path for s in status.storage]
    # A path not made yet (spec.target.path) is measured where it would be made: its nearest parent.
    assert measured == paths, "every path asked about, by its own name; none invented"
    assert all(s.total_bytes and s.total_bytes > 0 for s in status.storage)


def test_libvirt_probe_reads_the_same_way(tmp_path: Path) -> None:
    paths = _dirs(tmp_path)
    shell = _run(LIBVIRT_FACTS, paths, tmp_path)
    assert not (tmp_path / "PWNED").exists()
    facts = {
        "cpus": 1,
        "free": 1,
        "total": 1,
        "vendor": "Intel",
        "model": "Skylake",
        "features": [],
        "hypervisor": "QEMU",
        "hv_version": 7002000,
        "lib_version": 9000000,
    }
    status = _host_status(facts, shell, paths, 0, ACCESS)
    assert [s.path for s in status.storage] == paths
    assert status.default_path == paths[0]


def test_a_path_not_made_yet_is_measured_where_it_would_be_made(tmp_path: Path) -> None:
    """spec.target.path before the first migration into it: the file system of its nearest parent."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=False)
    if mounted.returncode != 0:
        pytest.skip("needs root to mount a tmpfs")
    try:
        paths = [str(small / "ves" / "live"), "/"]
        lines = [line.split() for line in _run(hostfacts.DF, paths, tmp_path).splitlines()]
        assert lines[0][:2] == ["df", "1"] and int(lines[0][3]) == 4 << 20 and lines[0][4] == "tmpfs"
        assert not (small / "ves").exists(), "nothing made by measuring"
    finally:
        subprocess.run(["umount", str(small)], check=True)
