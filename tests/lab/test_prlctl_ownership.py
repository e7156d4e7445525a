"""The prlctl driver's rollback removes only the copy its own `prlctl migrate` made: a VE that was on the
target before the job (of the clone's name, or with the moved VE's UUID) survives a failed migration
byte for byte. Through the operator, on lab hosts published with driver prlctl, where the lab's
prlctl STAND-IN (not Virtuozzo) refuses to migrate onto a VE of that name or UUID, as prlctl does.

The pre-flight TargetNameFree check would see that VE too; it is skipped, to stand for one that appears
after validation (the job may start hours later, at notBefore)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.operator import Migrations
from tests.lab.evidence import domain
from vemigrate.drivers.hostjob import JOBS_DIR
from vemigrate_dev.lab import Lab, LabInfo, VMState

Cleanup = Callable[[str], str]


def _md5(host: str, path: str) -> str:
    out = Lab.exec(host, ["md5sum", "--", path], capture=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[0]


@pytest.mark.parametrize("clash", ["name", "uuid"])
def test_a_ve_that_was_on_the_target_survives_a_failed_prlctl_migration(
    vz: LabInfo, migrations: Migrations, vm_cleanup: Cleanup, clash: str
) -> None:
    name = vm_cleanup(f"vzmine-{clash}")
    theirs = vm_cleanup(name if clash == "name" else f"vztheirs-{clash}")
    vm = Lab.create_vm("lab1", name, state=VMState.STOPPED)
    other = Lab.create_vm("lab2", theirs, state=VMState.STOPPED)
    if clash == "uuid":  # someone else's VE with the UUID of the VE that moves
        conn = vz.host("lab2").connect()
        xml = conn.lookupByName(theirs).XMLDesc(0)
        conn.lookupByName(theirs).undefine()
        conn.defineXML(xml.replace(f"<uuid>{other.uuid}</uuid>", f"<uuid>{vm.uuid}</uuid>"))
    before_xml = domain(vz, "lab2", theirs).XMLDesc(0)
    before_disk = _md5("lab2", other.disk)
    spec: dict[str, Any] = {
        "source": {"host": "lab1-vz", "name": name},
        "target": {"host": "lab2-vz"},
        "clone": clash == "name",  # a clone keeps the name: the name is what clashes
        "checks": {"skip": ["TargetNameFree"]},
    }
    uid = migrations.create(name, spec)["metadata"]["uid"]
    status = migrations.wait_phase(name, "Succeeded", "Failed", timeout=300)["status"]
    assert status["phase"] == "Failed", status
    assert "RollingBack" in [t["phase"] for t in status["phaseTransitions"]], "the rollback ran"
    assert "already exists" in status["failure"]["message"], status["failure"]
    survivor = domain(vz, "lab2", theirs)
    assert survivor is not None, "the VE that was on the target is still defined"
    assert survivor.XMLDesc(0) == before_xml, "its definition is as it was"
    assert _md5("lab2", other.disk) == before_disk, "its disk came through byte for byte"
    assert domain(vz, "lab1", name) is not None, "the source stays"
    assert Lab.exec("lab2", ["test", "-e", f"{JOBS_DIR}/{uid}"]).returncode != 0, "the job's record is gone"
