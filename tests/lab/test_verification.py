"""The copy's verification on the target, by the operator's own LibvirtDriver on a real lab host: the domain
must be this migration's, and its files there. It looks over SSH only for the files the migration's job did
not report finding there at its end (JobObservation.on_target)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from tests.unit.builders import driver_plan, spec
from vemigrate.api.migration import Mode
from vemigrate.drivers.libvirt import LibvirtDriver
from vemigrate_dev.lab import Lab, LabInfo, VMState


async def test_the_verification_looks_only_for_the_files_the_job_did_not_report(
    lab: LabInfo, vm_cleanup: Callable[[str], str]
) -> None:
    vm = Lab.create_vm("lab2", vm_cleanup("verify1"), state=VMState.STOPPED)
    target = LibvirtDriver(lab.access("lab2"))
    try:
        found = await target.find_ve("verify1")
        assert found is not None and found.disk_paths == (vm.disk,)
        migration = spec(source={"host": "lab1", "name": "verify1"}, target={"host": "lab2"})
        plan = driver_plan(
            str(uuid.uuid4()), migration, found, lab.access("lab1"), lab.access("lab2"), mode=Mode.OFFLINE
        )
        assert not await target.verify_target(plan), "a domain without this migration's tag is not its copy"
        await target._mark(plan)  # the tag the source's domain carries to the target
        assert await target.verify_target(plan)
        Lab.exec("lab2", ["rm", "-f", "--", vm.disk])
        assert not await target.verify_target(plan), "a missing file is found missing"
        # A file the job reported is not looked for again: the job looked a moment before, on the same host.
        assert await target.verify_target(plan, seen={vm.disk})
        assert not await target.verify_target(plan, seen={"/var/lib/libvirt/images/other.qcow2"})
    finally:
        await target.close()
