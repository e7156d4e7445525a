"""libvirt-python is the `libvirt` extra: where it is missing, a `driver: libvirt` host gets a driver that
refuses every call with a permanent reason naming the package (the host's Reachable condition and a
migration's failure say it), instead of the operator failing to import or start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vemigrate.core.access import HostAccess
from vemigrate.drivers.libvirt import LibvirtDriver
from vemigrate.drivers.prlctl import PrlctlDriver
from vemigrate.drivers.registry import driver_for
from vemigrate.reconcile import _PERMANENT_CONNECT_REASONS

OPERATOR = Path(__file__).resolve().parents[2] / "operator"

# In a fresh interpreter where `import libvirt` fails, as in an installation without the extra.
_WITHOUT_LIBVIRT = """
import asyncio, json, sys
sys.modules["libvirt"] = None
from vemigrate.core.access import HostAccess
from vemigrate.drivers.errors import PermanentError
from vemigrate.drivers.registry import driver_for
import vemigrate.handlers, vemigrate.reconcile  # the operator itself still imports
out = {}
for name in ("libvirt", "prlctl"):
    driver = driver_for(HostAccess(name="node-a", namespace="ns", address="192.0.2.1", driver=name))
    out[name] = type(driver).__name__
try:
    asyncio.run(driver_for(HostAccess(name="node-a", namespace="ns", address="192.0.2.1")).probe())
except PermanentError as exc:
    out["reason"], out["message"] = exc.reason, exc.message
print(json.dumps(out))
"""


def test_without_libvirt_python_a_libvirt_host_is_refused_with_the_package_named() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(OPERATOR), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_LIBVIRT], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["libvirt"] == "UnavailableDriver"
    assert seen["prlctl"] == "PrlctlDriver"
    assert seen["reason"] == "DriverUnavailable"
    assert seen["message"] == (
        "HypervisorHost 'node-a': driver libvirt needs libvirt-python, which is not installed with this "
        "ve-migrate (pip install 've-migrate[libvirt]'; the operator's image has it)"
    )
    # Waiting cannot fix it: a migration using the host fails in Validating with this reason at once.
    assert seen["reason"] in _PERMANENT_CONNECT_REASONS


def test_with_libvirt_python_the_drivers_are_the_real_ones() -> None:
    access = HostAccess(name="node-a", namespace="ns", address="192.0.2.1")
    assert isinstance(driver_for(access), LibvirtDriver)
    assert isinstance(
        driver_for(HostAccess(name="n", namespace="ns", address="192.0.2.1", driver="prlctl")), PrlctlDriver
    )
