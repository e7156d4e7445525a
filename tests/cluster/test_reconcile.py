"""reconcile.migration_pass, and the passes memo.Memo runs for the handlers, against the real kube-apiserver:
status writes, Events and finalizer decisions as users see them, pass by pass, with no kopf in between.
The hosts are SIMULATED (vemigrate/drivers/simulated.py: a Virtuozzo or libvirt node cannot exist in
this tier); their HypervisorHosts and Secrets are real objects the passes read."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.objects import GROUP, MIGRATIONS, loopback_hosts, migration
from vemigrate import handlers, reconcile
from vemigrate.api.common import VERSION
from vemigrate.api.migration import Phase
from vemigrate.api.reasons import Reason
from vemigrate.core.decision import Decision
from vemigrate.core.observation import ErrorClass, OtherMigration, VEState
from vemigrate.drivers.errors import PermanentError, StateUnknownError
from vemigrate.drivers.simulated import JobScript, SimulatedHost, SimulatedWorld, ve_facts
from vemigrate.kube.client import Kube
from vemigrate.memo import Memo
from vemigrate.queue import Admission
from vemigrate.wakeups import Cause


@dataclass
class Bench:
    """One namespace with hosts node-a and node-b (real objects; SIMULATED behind the driver), and a
    World whose drivers are the simulation's."""

    custom: Any
    core: Any
    namespace: str
    sim: SimulatedWorld
    world: reconcile.World
    admission: Admission = field(default_factory=Admission)

    def create(self, name: str, **spec: Any) -> str:
        body = migration(name, source={"host": "node-a", "name": "web-01"}, target={"host": "node-b"}, **spec)
        made = self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, MIGRATIONS, body)
        return str(made["metadata"]["uid"])

    def body(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, MIGRATIONS, name))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.body(name).get("status") or {})

    async def step(self, name: str, **kwargs: Any) -> Decision:
        """One pass on the object as the API has it now (as the watch would deliver it)."""
        return await reconcile.migration_pass(self.world, self.body(name), admission=self.admission, **kwargs)

    async def until(self, name: str, phase: Phase, passes: int = 8, **kwargs: Any) -> list[str]:
        """Passes until the stored phase is `phase`; the phases each pass left, in order."""
        seen: list[str] = []
        for _ in range(passes):
            decision = await self.step(name, **kwargs)
            seen.append(decision.status.phase.value)
            if self.status(name).get("phase") == phase.value:
                return seen
        raise AssertionError(f"{name} not {phase.value} after {passes} passes: {seen}, {self.status(name)}")

    def events(self, name: str) -> Counter[tuple[str, str]]:
        """How many of the migration's Events have each (type, reason); their timestamps have whole seconds,
        so they tell no order."""
        found = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        return Counter((e.type, e.reason) for e in found)

    async def indexed(self, memo: Memo) -> list[OtherMigration]:
        """The namespace's migrations as the handlers' kopf index has them (its own function)."""
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, MIGRATIONS)["items"]
        found: list[OtherMigration] = []
        for o in items:
            meta = o["metadata"]
            entry = await handlers.migrations(body=o, uid=meta["uid"], spec=o["spec"], meta=meta, memo=memo)
            found += entry.values()
        return found


@pytest.fixture
def bench_objects(kube_admin: Any, namespace: str) -> Iterator[tuple[Any, Any]]:
    loopback_hosts(kube_admin, namespace)
    yield client.CustomObjectsApi(kube_admin), client.CoreV1Api(kube_admin)


@pytest.fixture
async def bench(kube_admin: Any, namespace: str, bench_objects: tuple[Any, Any]) -> AsyncIterator[Bench]:
    sim = SimulatedWorld(job_seconds=0)
    sim.add_ve("node-a", "web-01")
    world = reconcile.World(kube=Kube(kube_admin.configuration), make_driver=sim.driver)
    yield Bench(*bench_objects, namespace, sim, world)
    for uid in list(world._watches):
        world.forget(uid)
    await world.kube.close()


async def test_a_dry_run_is_checked_and_succeeds_moving_nothing(bench: Bench) -> None:
    bench.create("dry", dryRun=True)
    assert await bench.until("dry", Phase.SUCCEEDED) == ["Validating", "Succeeded"]
    status = bench.status("dry")
    assert status["reason"] == Reason.DRY_RUN
    assert [t["phase"] for t in status["phaseTransitions"]] == ["Validating", "Succeeded"]
    assert status["checks"] and all(c["result"] != "Failed" for c in status["checks"])
    assert bench.events("dry") == Counter({("Normal", "Validating"): 1, ("Normal", "Succeeded"): 1})
    assert ("node-a", "start_job") not in bench.sim.calls, "a dry run starts no job"
    assert bench.sim.ve("node-a", "web-01") is not None and bench.sim.ve("node-b", "web-01") is None


@pytest.mark.parametrize("reachable", [True, False])
async def test_the_storage_probe_runs_on_the_reach_checks_connection_and_not_without_one(
    bench: Bench, reachable: bool
) -> None:
    """The SSHPort check's login becomes the migration's connection to the target, so the storage probe
    waits for it (two probes at once would each make a connection); a source that cannot reach the
    target is not probed, and the check says why the migration cannot start."""
    if not reachable:
        bench.sim.unreachable.add(("node-a", "node-b"))
    bench.create("dry", dryRun=True)
    await bench.until("dry", Phase.SUCCEEDED if reachable else Phase.FAILED)
    on_source = [method for host, method in bench.sim.calls if host == "node-a"]
    if reachable:
        assert on_source.index("reaches") < on_source.index("shared_disks"), on_source
    else:
        assert "reaches" in on_source and "shared_disks" not in on_source, on_source
        checks = {c["name"]: c["result"] for c in bench.status("dry")["checks"]}
        assert checks["SSHPort"] == "Failed", checks


async def test_validating_reads_the_jobs_record_alongside_the_ve_not_after_it(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether this attempt's job exists already (an operator that died after starting it) is read in the
    same round as the checks' reads: here the source's VE lookup waits for the job's read to begin, which a
    pass reading one after the other never does."""
    bench.sim.script("web-01", JobScript(seconds=None))
    uid = bench.create("round")
    await bench.until("round", Phase.VALIDATING)
    bench.world.watch_job(uid, None)  # no long poll: the passes below read the job themselves
    asked = asyncio.Event()
    job, find_ve = SimulatedHost.job, SimulatedHost.find_ve

    async def job_read(self: SimulatedHost, plan: Any) -> Any:
        asked.set()
        return await job(self, plan)

    async def ve_after_job_asked(self: SimulatedHost, name: str, *, for_checks: bool = False) -> Any:
        if self.access.name == "node-a":
            await asyncio.wait_for(asked.wait(), 5)
        return await find_ve(self, name, for_checks=for_checks)

    monkeypatch.setattr(SimulatedHost, "job", job_read)
    monkeypatch.setattr(SimulatedHost, "find_ve", ve_after_job_asked)
    bench.sim.calls.clear()
    assert (await bench.step("round")).status.phase == Phase.TRANSFERRING
    assert [m for h, m in bench.sim.calls if h == "node-a"].count("job") == 1, bench.sim.calls


async def test_a_running_jobs_progress_is_read_with_the_ve(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """A running job's progress is read with the plan that holds the VE, looked up in the same pass: prlctl
    counts the bytes moved from the VE's size (tests/lab/test_prlctl.py waits for them)."""
    bench.sim.script("web-01", JobScript(seconds=None))
    uid = bench.create("progress")
    await bench.until("progress", Phase.TRANSFERRING)
    bench.world.watch_job(uid, None)  # no long poll: the pass below reads the job itself
    plans: list[Any] = []
    job = SimulatedHost.job

    async def job_read(self: SimulatedHost, plan: Any) -> Any:
        plans.append(plan)
        return await job(self, plan)

    monkeypatch.setattr(SimulatedHost, "job", job_read)
    assert (await bench.step("progress")).status.phase == Phase.TRANSFERRING
    assert plans and all(p.ve is not None and p.ve.name == "web-01" for p in plans), plans


@pytest.mark.parametrize(("state", "mode"), [(VEState.RUNNING, "Live"), (VEState.STOPPED, "Offline")])
async def test_a_migration_moves_the_ve_disposes_of_the_source_and_forgets_its_job(
    bench: Bench, state: VEState, mode: str
) -> None:
    bench.sim.add_ve("node-a", ve_facts("web-01", state))
    bench.create("move")
    # The job completes as soon as it starts: one pass sees it, verifies the copy, disposes of the source
    # and observes that, and writes Succeeded.
    assert await bench.until("move", Phase.SUCCEEDED) == ["Validating", "Transferring", "Succeeded"]
    status = bench.status("move")
    assert status["mode"] == mode and status["reason"] == Reason.MIGRATED
    assert status["result"]["sourceDisposition"] == "Removed" and status["result"]["targetName"] == "web-01"
    assert [t["phase"] for t in status["phaseTransitions"]] == ["Validating", "Transferring", "Finalizing", "Succeeded"]
    assert bench.sim.ve("node-a", "web-01") is None, "the source was removed"
    moved = bench.sim.ve("node-b", "web-01")
    assert moved is not None and moved.state == state
    # The job's records went in the pass that wrote the final phase, once its purpose was served.
    assert bench.sim.jobs("node-a") == [] and bench.sim.calls.count(("node-a", "forget_job")) == 1
    phases = ("Validating", "Transferring", "Finalizing", "Succeeded")
    assert bench.events("move") == Counter({("Normal", phase): 1 for phase in phases})


async def test_the_pass_the_jobs_end_wakes_shows_finalizing_before_it_disposes_of_the_source(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Woken by its job's end, a pass reads the job first and the VE after it (not the VE, the job, then the
    VE again), writes Finalizing before it removes anything, and takes the disposal's return as its result
    (no second look at the hosts)."""
    bench.sim.script("web-01", JobScript(seconds=None))
    uid = bench.create("wake")
    await bench.until("wake", Phase.TRANSFERRING)
    stored_at_disposal: list[str] = []
    dispose = SimulatedHost.dispose_source

    async def watched(self: SimulatedHost, *args: Any) -> None:
        stored_at_disposal.append(bench.status("wake")["phase"])
        await dispose(self, *args)

    monkeypatch.setattr(SimulatedHost, "dispose_source", watched)
    # Its long poll stopped first, so that this pass reads the job itself (a pass woken by the poll takes
    # what the poll read: test_the_end_of_a_migration_wakes_the_waiter_whose_turn_it_is).
    bench.world.watch_job(uid, None)
    bench.sim.end_job(uid)
    bench.sim.calls.clear()
    assert (await bench.step("wake", woken_by=Cause.JOB_ENDED)).status.phase == Phase.SUCCEEDED
    assert stored_at_disposal == ["Finalizing"], "a watching client saw the job's end before the disposal"
    on_source = [method for host, method in bench.sim.calls if host == "node-a"]
    assert on_source[0] == "job" and on_source.count("job") == 1, on_source
    assert on_source == ["job", "find_ve", "source_disposed", "dispose_source", "forget_job"], on_source
    assert bench.sim.ve("node-a", "web-01") is None and bench.sim.ve("node-b", "web-01") is not None
    status = bench.status("wake")
    assert [t["phase"] for t in status["phaseTransitions"]] == ["Validating", "Transferring", "Finalizing", "Succeeded"]


async def test_a_disposal_that_fails_leaves_the_migration_finalizing_until_a_pass_sees_it_done(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disposal's return is its result only when it returns: one that raises ends the pass in
    Finalizing (a Warning says why), and Succeeded waits for a pass that disposes of the source."""
    bench.sim.script("web-01", JobScript(seconds=None))
    uid = bench.create("stuck")
    await bench.until("stuck", Phase.TRANSFERRING)
    dispose = SimulatedHost.dispose_source
    refusals = [StateUnknownError(Reason.HOST_UNREACHABLE, "node-a stopped answering (simulated)")]

    async def flaky(self: SimulatedHost, *args: Any) -> None:
        if refusals:
            raise refusals.pop()
        await dispose(self, *args)

    monkeypatch.setattr(SimulatedHost, "dispose_source", flaky)
    bench.sim.end_job(uid)
    assert (await bench.step("stuck", woken_by=Cause.JOB_ENDED)).status.phase == Phase.FINALIZING
    assert bench.status("stuck")["phase"] == "Finalizing"
    assert bench.sim.ve("node-a", "web-01") is not None, "not removed, and not said to be"
    assert ("Warning", "DisposeSourceFailed") in bench.events("stuck")
    assert await bench.until("stuck", Phase.SUCCEEDED) == ["Succeeded"]
    assert bench.sim.ve("node-a", "web-01") is None and bench.sim.ve("node-b", "web-01") is not None


async def test_a_failed_job_is_rolled_back_and_retried_until_attempts_run_out(bench: Bench) -> None:
    broke = (Reason.HOST_UNREACHABLE, "the link to node-b broke (simulated)", ErrorClass.RETRYABLE)
    bench.sim.script("web-01", JobScript(seconds=0, failure=broke), JobScript(seconds=0, failure=broke))
    uid = bench.create("flaky", retry={"maxAttempts": 2, "backoffSeconds": 1})
    await bench.until("flaky", Phase.TRANSFERRING)
    assert await bench.until("flaky", Phase.QUEUED) == ["RollingBack", "RollingBack", "Queued"]
    status = bench.status("flaky")
    assert status["failure"]["reason"] == Reason.HOST_UNREACHABLE and status["failure"]["retryable"]
    assert status["attempts"] == 1 and status["nextAttemptTime"]
    assert bench.sim.leftovers("node-b", uid) == [], "the half-built copy was cleaned up before waiting"
    assert bench.sim.ve("node-a", "web-01") is not None
    await asyncio.sleep(1.2)  # the backoff
    await bench.until("flaky", Phase.TRANSFERRING)
    assert bench.status("flaky")["attempts"] == 2
    await bench.until("flaky", Phase.FAILED)
    status = bench.status("flaky")
    assert status["failure"]["reason"] == Reason.HOST_UNREACHABLE and status["attempts"] == 2
    assert bench.sim.ve("node-a", "web-01") is not None and bench.sim.leftovers("node-b", uid) == []
    events = bench.events("flaky")
    assert events[("Warning", "RollingBack")] == 2 and events[("Normal", "Queued")] == 1
    assert events[("Normal", "Transferring")] == 2 and events[("Warning", "Failed")] == 1


async def test_a_job_refused_at_its_start_is_recorded_as_a_failed_job(bench: Bench) -> None:
    refused = PermanentError(Reason.LIVE_CONTAINER_UNSUPPORTED, "cannot move this one live (simulated)")
    bench.sim.script("web-01", JobScript(refused=refused))
    bench.create("refused")
    await bench.until("refused", Phase.FAILED)
    status = bench.status("refused")
    assert status["failure"]["reason"] == Reason.LIVE_CONTAINER_UNSUPPORTED
    assert not status["failure"]["retryable"] and status["attempts"] == 1
    assert ("Warning", "StartJobFailed") in bench.events("refused")
    assert bench.sim.jobs("node-a") == [] and bench.sim.ve("node-a", "web-01") is not None


async def test_a_source_host_that_does_not_answer_keeps_the_phase_and_fails_nothing(bench: Bench) -> None:
    bench.sim.script("web-01", JobScript(seconds=None))
    uid = bench.create("silent")
    await bench.until("silent", Phase.TRANSFERRING)
    bench.sim.stop_answering("node-a")
    for _ in range(3):
        decision = await bench.step("silent")
        assert decision.status.phase == Phase.TRANSFERRING and not decision.actions
        assert decision.wake_on_job_end, "its job's end still wakes it"
    status = bench.status("silent")
    assert status["phase"] == "Transferring" and status.get("failure") is None
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == Reason.STATE_UNKNOWN and "did not answer" in progressing["message"]
    bench.sim.answer_again("node-a")
    bench.sim.end_job(uid)
    await bench.until("silent", Phase.SUCCEEDED)


async def test_deletion_rolls_back_and_releases_the_finalizer_only_when_done(bench: Bench) -> None:
    bench.sim.script("web-01", JobScript(seconds=None))
    uid = bench.create("deleted")
    await bench.until("deleted", Phase.TRANSFERRING)
    assert bench.sim.leftovers("node-b", uid) == ["web-01"]
    memo = Memo(bench.world, admission=bench.admission)  # the deletion handler's passes
    released: list[bool] = []
    for _ in range(4):
        decision = await memo.deletion_pass(bench.body("deleted"), list)
        released.append(decision.release_finalizer)
        if decision.release_finalizer:
            break
    assert released == [False, False, True], "abort, clean up, then release"
    assert memo.locks == {}, "nothing kept of it once released"
    status = bench.status("deleted")
    assert status["phase"] == "Cancelled" and status["failure"]["reason"] == Reason.CANCELLED
    assert bench.sim.leftovers("node-b", uid) == [], "nothing of this migration left on the target"
    source = bench.sim.ve("node-a", "web-01")
    assert source is not None and source.state == VEState.RUNNING, "the VE runs on the source as before"
    assert ("node-a", "abort_job") in bench.sim.calls and ("node-b", "cleanup_target") in bench.sim.calls


async def test_an_invalid_spec_stored_before_a_schema_change_fails_the_migration(bench: Bench) -> None:
    bench.create("old")
    body = bench.body("old")
    body["spec"]["source"]["name"] = "no/slashes"  # as a newer schema would refuse it
    decision = await reconcile.migration_pass(bench.world, body, admission=bench.admission)
    assert decision.status.phase == Phase.FAILED
    status = bench.status("old")
    assert status["phase"] == "Failed" and status["failure"]["reason"] == Reason.INVALID_SPEC
    assert "spec.source.name" in status["failure"]["message"]
    assert bench.events("old") == Counter({("Warning", "InvalidSpec"): 1})
    assert bench.sim.calls == [], "no host was asked anything"
    # Deleting it touches nothing and lets it go.
    body["status"] = status
    deleted = await reconcile.migration_pass(bench.world, body, admission=bench.admission, deleting=True)
    assert deleted.release_finalizer


async def test_the_end_of_a_migration_wakes_the_waiter_whose_turn_it_is(bench: Bench) -> None:
    """The handlers' passes (memo.Memo) as kopf's daemon runs them: the first migration takes node-a's one
    outbound slot, the second queues; the first's job ends and wakes it, it finishes, and that wakes the
    second, whose turn it is now."""
    bench.custom.patch_namespaced_custom_object(
        GROUP, VERSION, bench.namespace, "hypervisorhosts", "node-a", {"spec": {"maxOutbound": 1}}
    )
    bench.sim.add_ve("node-a", "web-02")
    memo = Memo(bench.world, admission=bench.admission)
    bench.sim.script("web-01", JobScript(seconds=None))
    first = bench.create("first")
    bench.custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        bench.namespace,
        MIGRATIONS,
        migration("second", source={"host": "node-a", "name": "web-02"}, target={"host": "node-b"}),
    )
    second = bench.body("second")["metadata"]["uid"]

    async def daemon_pass(name: str, cause: Cause) -> Decision:
        indexed = await bench.indexed(memo)
        return await memo.daemon_pass(bench.body(name), lambda: indexed, cause)

    assert (await daemon_pass("first", Cause.START)).status.phase == Phase.VALIDATING
    assert (await daemon_pass("second", Cause.START)).status.phase == Phase.QUEUED
    assert (await daemon_pass("first", Cause.TIMER)).status.phase == Phase.TRANSFERRING
    bench.sim.end_job(first)
    never = asyncio.Event()
    assert await memo.wakeups.sleep(first, 5, never.wait()) == Cause.JOB_ENDED
    assert await memo.wakeups.sleep(second, 0.01, never.wait()) == Cause.TIMER, "not its turn yet"
    bench.sim.calls.clear()
    assert (await daemon_pass("first", Cause.JOB_ENDED)).status.phase == Phase.SUCCEEDED
    # The long poll that saw the job end read its outcome in the same call: the pass it woke takes that.
    assert ("node-a", "job") not in bench.sim.calls, bench.sim.calls
    assert await memo.wakeups.sleep(second, 0.01, never.wait()) == Cause.SLOT_FREED
    assert (await daemon_pass("second", Cause.SLOT_FREED)).status.phase == Phase.VALIDATING
