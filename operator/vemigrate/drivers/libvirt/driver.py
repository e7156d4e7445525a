"""The libvirt driver itself: `LibvirtDriver`, one host's facts, its VEs, the migration job on the source
and the copy on the target, through libvirtd (connection.py) and SSH. The package docstring says how
it migrates; the jobs' text is built in jobs.py, and what it reads is parsed in facts.py.
"""

from __future__ import annotations

import contextlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

import libvirt

from vemigrate.api.host import HostStatus, VEKind
from vemigrate.api.migration import Mode, SourceDisposition
from vemigrate.api.reasons import Reason
from vemigrate.core.access import HostAccess
from vemigrate.core.observation import JobObservation, JobState, JobStats, VEFacts, VEState
from vemigrate.drivers import hostfacts, hostjob, jobfailure
from vemigrate.drivers.errors import PermanentError, StateUnknownError
from vemigrate.drivers.libvirt.connection import Libvirtd
from vemigrate.drivers.libvirt.facts import (
    _FACTS,
    DEFAULT_POOL_PATH,
    METADATA_KEY,
    METADATA_NS,
    _disk_bytes,
    _disks,
    _host_status,
    _in_post_copy,
    _migration_uid,
    _post_copy_failed,
    _private_area,
    _state,
    live_job_state,
    unmoved_storage,
)
from vemigrate.drivers.libvirt.jobs import (
    _OWNED,
    _REMOVE_OWNED,
    REPORTS,
    _container_script,
    _dirty_rate,
    _offline_script,
    _offline_stats,
    _record,
    _target_name,
    completed_stats,
    live_script,
    on_target,
    reach,
    read_removed,
    read_shared_probe,
    remove_local,
    shared_probe,
)
from vemigrate.drivers.protocol import MigrationPlan
from vemigrate.drivers.ssh import SSHHost

LXC_CONFIG_DIR = "/etc/libvirt/lxc"  # where the system libvirtd keeps container definitions


def _known_sharing(ve: VEFacts, paths: list[str]) -> dict[str, str] | None:
    """Shared or local for each of these disks, from the VE's probed verdicts; None unless the probe
    told every one of them."""
    if ve.shared_disks is None or not set(paths) <= set(ve.disk_paths):
        return None
    return {path: "shared" if path in ve.shared_disks else "local" for path in paths}


class LibvirtDriver:
    """One host reached through libvirt. See the package docstring for how."""

    def __init__(self, access: HostAccess) -> None:
        self.access = access
        self.ssh = SSHHost(access)
        self.libvirtd = Libvirtd(access, self.ssh)

    # -- plumbing ---------------------------------------------------------------------------
    async def close(self) -> None:
        await self.libvirtd.close()
        await self.ssh.close()

    @staticmethod
    def _lookup(conn: Any, name: str) -> Any:
        for lookup in (conn.lookupByName, conn.lookupByUUIDString):
            try:
                return lookup(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
                    raise
        return None

    # -- facts ------------------------------------------------------------------------------
    async def probe(self, paths: Sequence[str] = ()) -> HostStatus:
        def read(conn: Any) -> dict[str, Any]:
            info = conn.getInfo()
            caps = ET.fromstring(conn.getCapabilities())
            pools = []
            for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
                path = ET.fromstring(pool.XMLDesc()).findtext("./target/path")
                if path:
                    pools.append((pool.name(), path))
            return {
                "cpus": info[2],
                "free": conn.getFreeMemory(),
                "total": info[1] * 1024 * 1024,
                "vendor": caps.findtext("./host/cpu/vendor"),
                "model": caps.findtext("./host/cpu/model"),
                "features": sorted(f.get("name", "") for f in caps.findall("./host/cpu/feature")),
                "hypervisor": conn.getType(),
                "hv_version": conn.getVersion(),
                "lib_version": conn.getLibVersion(),
                "pools": pools,
            }

        facts = await self.libvirtd.call("reading host facts", read)
        pools = [p for _, p in facts["pools"]] or [DEFAULT_POOL_PATH]
        measured = list(dict.fromkeys([*pools, *paths, "/"]))  # the first is the default directory
        shell, sent_ns = await hostfacts.run(self.ssh, _FACTS, measured)
        return _host_status(facts, shell, measured, sent_ns, self.access)

    async def find_ve(self, name: str, *, for_checks: bool = False) -> VEFacts | None:
        def read(conn: Any) -> tuple[VEFacts, list[str]] | None:
            dom = self._lookup(conn, name)
            if dom is None:
                return None
            root = ET.fromstring(dom.XMLDesc(0))
            disks = _disks(root)
            # Every disk on the host, ours first: their backing files tell linked clones apart.
            others = [
                d.path
                for other in (conn.listAllDomains(0) if for_checks else ())
                if other.UUIDString() != dom.UUIDString()
                for d in _disks(ET.fromstring(other.XMLDesc(0)))
            ]
            bridges = tuple(
                str(i.find("source").get("bridge"))  # type: ignore[union-attr]
                for i in root.findall("./devices/interface[@type='bridge']")
                if i.find("source") is not None
            )
            macs = tuple(str(m.get("address")) for m in root.findall("./devices/interface/mac"))
            private = _private_area(root)
            try:
                snapshots = dom.snapshotNum(0)
            except libvirt.libvirtError:  # LXC keeps no snapshots
                snapshots = 0
            storage = disks[0].path if disks else private
            unmovable, non_file_disks = unmoved_storage(root)
            facts = VEFacts(
                name=dom.name(),
                uuid=dom.UUIDString(),
                type=VEKind.CONTAINER if conn.getType() == "LXC" else VEKind.VM,
                state=_state(dom),
                memory_bytes=dom.maxMemory() * 1024,
                vcpus=dom.info()[3],
                disk_bytes=_disk_bytes(conn, dom, [d.path for d in disks]),
                bridges=bridges,
                snapshots=snapshots,
                storage_path=str(PurePosixPath(storage).parent) if storage else None,
                disk_paths=tuple(d.path for d in disks),
                private_area=private,
                macs=macs,
                post_copy_failed=_post_copy_failed(dom.state()),
                in_post_copy=_in_post_copy(dom.state()),
                unmovable=unmovable,
                non_file_disks=non_file_disks,
            )
            return facts, others

        found = await self.libvirtd.call(f"looking up {name!r}", read)
        if found is None:
            return None
        facts, others = found
        if not for_checks:
            # A pass during or after the job: one libvirt call, no command on the host (the checks' costly
            # facts stay unknown; only Validating decides on them).
            return facts
        if facts.private_area is not None:
            du = await self.ssh.run(["du", "-sb", "--", facts.private_area], check=False)
            size = du.stdout.split()[0] if du.ok and du.stdout.split() else ""
            facts = replace(facts, disk_bytes=int(size) if size.isdigit() else None)
        return replace(facts, linked_clone=await self._linked(list(facts.disk_paths), others))

    async def _linked(self, ours: list[str], others: list[str]) -> bool:
        """A linked clone (one of our disks has a backing file) or the base of one (another domain's
        disk is backed by ours). Read with qemu-img: libvirt shows backing chains of running domains only."""
        if not ours:
            return False
        script = 'for f in "$@"; do printf "%s\\t" "$f"; qemu-img info -U --output=json "$f" | tr -d "\\n"; echo; done'
        out = await self.ssh.run(["sh", "-c", script, "sh", *ours, *others])
        backing: dict[str, str | None] = {}
        for line in out.stdout.splitlines():
            path, _, info = line.partition("\t")
            with contextlib.suppress(ValueError):
                details = json.loads(info)
                backing[path] = details.get("full-backing-filename") or details.get("backing-filename")
        if any(backing.get(p) for p in ours):
            return True
        return any(backing.get(p) in ours for p in others)

    async def reaches(self, other: HostAccess, uid: str | None = None) -> bool:
        if uid is None:
            return await self.ssh.reaches(other)
        # The login that proves the port open becomes the migration's shared connection.
        return (await self.ssh.run(reach(other, hostjob.control_path(uid)), check=False)).ok

    async def shared_disks(self, ve: VEFacts, target: HostAccess, uid: str | None = None) -> tuple[str, ...] | None:
        verdicts = await self._shared(target, list(ve.disk_paths), uid)
        if any(v != "shared" and v != "local" for v in verdicts.values()):
            return None
        return tuple(path for path in ve.disk_paths if verdicts.get(path) == "shared")

    async def _shared(self, target: HostAccess, disks: list[str], uid: str | None = None) -> dict[str, str]:
        """Which of these disk files `target` sees as the same files (shared, local or unknown each), by a
        probe file made next to each disk here and looked for over this host's own SSH to the target:
        with `uid`, on that migration's shared connection (made by this probe when it is not up)."""
        if not disks:
            return {}
        probable = [d for d in disks if not any(c in d for c in "\t\n\r")]
        control = hostjob.control_path(uid) if uid is not None else None
        out = await self.ssh.run(shared_probe(target, probable, control)) if probable else None
        verdicts = read_shared_probe(out.stdout) if out is not None else {}
        return {d: verdicts.get(d, "unknown") for d in disks}

    async def _remove_local(self, target: HostAccess, disks: list[str], uid: str) -> list[str]:
        """Remove the disks `target` does not see as its own files (`_shared`'s probe and the removal in one
        command, on the migration's shared connection); nothing at all unless every verdict is known.
        Returns the files removed."""
        probable = [d for d in disks if not any(c in d for c in "\t\n\r")]
        out = await self.ssh.run(remove_local(target, disks, hostjob.control_path(uid))) if probable == disks else None
        verdicts = read_shared_probe(out.stdout) if out is not None else {}
        if any(verdicts.get(d, "unknown") == "unknown" for d in disks):
            raise StateUnknownError(
                Reason.SHARED_STORAGE_UNKNOWN,
                f"could not tell whether {self.access.name} shares the disks {', '.join(disks)[:300]} with the "
                "target; none removed yet",
            )
        local = [d for d in disks if verdicts[d] == "local"]
        assert out is not None
        if left := set(local) - read_removed(out.stdout):
            names = ", ".join(sorted(left))[:300]
            raise PermanentError(Reason.COMMAND_FAILED, f"{names} on {self.access.name} were not removed")
        return local

    # -- the job on the source --------------------------------------------------------------
    async def start_job(self, plan: MigrationPlan) -> None:
        if plan.ve is None:
            raise PermanentError(Reason.VE_NOT_FOUND, f"VE {plan.spec.source.name!r} is not on {self.access.name}")
        flags = libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE
        xml = await self.libvirtd.call("reading the domain", lambda c: self._lookup(c, plan.ve.uuid).XMLDesc(flags))  # type: ignore[union-attr]
        if plan.ve.type == VEKind.CONTAINER:
            if plan.mode == Mode.LIVE:
                raise PermanentError(
                    Reason.LIVE_CONTAINER_UNSUPPORTED,
                    "libvirt's LXC driver cannot move a running container: stop it and migrate offline, "
                    "or migrate it live between Virtuozzo nodes (driver: prlctl)",
                )
            text = _container_script(plan, xml)
        elif plan.mode == Mode.LIVE:
            if plan.spec.clone:
                raise PermanentError(
                    Reason.CLONE_NEEDS_STOPPED_VM,
                    "libvirt cannot clone a running VM live: stop it and migrate offline with clone, "
                    "or migrate without clone",
                )
            every = _disks(ET.fromstring(xml))
            # A disk both hosts see stays where it is: the verdicts of this pass's SharedStorage probe when
            # they cover every disk (made moments ago, on the connection the job uses), else probed now.
            # Either way the job creates each copied disk only where nothing is (`_CREATE_DISKS`).
            paths = [d.path for d in every]
            verdicts = _known_sharing(plan.ve, paths) or await self._shared(plan.target, paths, plan.uid)
            shared = [d.target for d in every if verdicts[d.path] == "shared"]
            disks = [d for d in every if verdicts[d.path] != "shared"]
            uuid = plan.ve.uuid

            def read(conn: Any) -> tuple[list[int], str | None]:
                dom = self._lookup(conn, uuid)
                sizes = [dom.blockInfo(d.path)[0] for d in disks]
                # With spec.target.path the target gets the definitions with the disks' new paths.
                flags = libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_MIGRATABLE
                return sizes, dom.XMLDesc(flags) if plan.spec.target.path and disks else None

            sizes, live_xml = await self.libvirtd.call("reading the disks and the live definition", read)
            text = live_script(
                plan,
                copy_disks=bool(disks),
                disks=list(zip(disks, sizes, strict=True)),
                shared=shared,
                xml=(live_xml, xml) if live_xml is not None else None,
            )
        else:
            text = _offline_script(plan, xml)
        await self._mark(plan)
        await hostjob.start(self.ssh, plan.uid, plan.attempt, text)

    async def _mark(self, plan: MigrationPlan) -> None:
        """Tag the domain with the migration UID; live migration carries the tag to the target."""
        assert plan.ve is not None
        element = f"<migration uid='{plan.uid}'/>"

        def tag(conn: Any) -> None:
            dom = self._lookup(conn, plan.ve.uuid)  # type: ignore[union-attr]
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
            if dom.isActive():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, element, METADATA_KEY, METADATA_NS, flags)

        await self.libvirtd.call("tagging the domain", tag)

    async def job(self, plan: MigrationPlan) -> JobObservation:
        # A finished job's figures come with its record (its `stats` and `events` files): one round trip.
        record = await hostjob.read(self.ssh, plan.uid, plan.attempt, REPORTS)
        if record.state != "running":
            return self._outcome(record)
        if plan.mode != Mode.LIVE:
            return JobObservation(state=JobState.RUNNING, stats=_offline_stats(record.log_tail))
        live = await self._live_progress(plan)
        if live is not None:
            return live
        # The domain left the source between the record's read and libvirt's: the job is writing its exit.
        record = await hostjob.read(self.ssh, plan.uid, plan.attempt, REPORTS)
        if record.state != "running":
            return self._outcome(record)
        return await self._live_progress(plan) or JobObservation(state=JobState.RUNNING)  # no exit record yet

    def _outcome(self, record: hostjob.JobRecord) -> JobObservation:
        """What the record of a job that is not running says: not started, failed, lost, or completed
        with its figures."""
        observed = hostjob.observe(record, f"the migration job on {self.access.name}", jobfailure.classify)
        if observed is not None:
            return observed
        stats, events = (record.reports.get(name, "") for name in REPORTS)
        return JobObservation(
            state=JobState.COMPLETED,
            stats=completed_stats(stats, record.log_tail, events),
            on_target=on_target(stats, record.log_tail),
        )

    async def wait_job_end(self, plan: MigrationPlan, seconds: float) -> JobObservation | bool | None:
        ended = await hostjob.wait_end(self.ssh, plan.uid, plan.attempt, seconds, REPORTS)
        return self._outcome(ended) if isinstance(ended, hostjob.JobRecord) else ended

    async def _live_progress(self, plan: MigrationPlan) -> JobObservation | None:
        """The running live job's figures from libvirt; None when the domain is no longer running on the
        source (the migration just ended, or the guest stopped): libvirt has no job to read then, and the
        job's record says how it ended. Looked up by the spec's name: the job is read before this pass
        looks the VE up (reconcile), so that what it sees of the VE is from after the job's state."""

        def gone(dom: Any) -> bool:
            try:
                return dom is None or not dom.isActive()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:  # undefined since the lookup
                    return True
                raise

        def read(conn: Any) -> tuple[dict[str, int], JobState] | None:
            dom = self._lookup(conn, plan.ve.uuid if plan.ve is not None else plan.spec.source.name)
            if gone(dom):
                return None
            try:
                return dom.jobStats(0), live_job_state(dom.state())
            except libvirt.libvirtError as exc:
                # "Requested operation is not valid: domain is not running": it left between the calls.
                if exc.get_error_code() in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN) and gone(dom):
                    return None
                raise

        found = await self.libvirtd.call("reading job statistics", read)
        if found is None:
            return None
        stats, job_state = found
        return JobObservation(
            state=job_state,
            stats=JobStats(
                bytes_processed=stats.get("data_processed"),
                bytes_remaining=stats.get("data_remaining"),
                bytes_total=stats.get("data_total"),
                dirty_rate_bytes_per_second=_dirty_rate(stats),
                iteration=stats.get("memory_iteration"),
            ),
        )

    async def abort_job(self, plan: MigrationPlan) -> None:
        if plan.mode == Mode.LIVE and plan.ve is not None:

            def abort(conn: Any) -> bool:
                dom = self._lookup(conn, plan.ve.uuid)  # type: ignore[union-attr]
                if dom is not None and live_job_state(dom.state()) == JobState.POST_COPY:
                    return False  # split between the hosts: neither the job nor its virsh may be stopped
                if dom is not None and dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
                    dom.abortJob()
                return True

            try:
                stoppable = await self.libvirtd.call("aborting the migration", abort)
            except PermanentError:
                stoppable = True  # no such domain (any more): only the job's processes are left to stop
            if not stoppable:
                return
        await hostjob.kill(self.ssh, plan.uid, plan.attempt)

    async def force_complete(self, plan: MigrationPlan) -> None:
        if plan.mode != Mode.LIVE or plan.ve is None:
            return

        def finish(conn: Any) -> None:
            dom = self._lookup(conn, plan.ve.uuid)  # type: ignore[union-attr]
            if plan.spec.post_copy:
                dom.migrateStartPostCopy(0)
            elif _state(dom) == VEState.RUNNING:
                dom.suspend()  # nothing left dirty: the next iteration converges; resumed on the target

        await self.libvirtd.call("forcing completion", finish)

    async def source_disposed(self, plan: MigrationPlan, disposition: SourceDisposition) -> bool:
        if disposition == SourceDisposition.KEPT:
            return True
        dom = await self.libvirtd.call("looking up the source", lambda c: self._lookup(c, plan.spec.source.name))
        return dom is None

    async def dispose_source(self, plan: MigrationPlan, disposition: SourceDisposition) -> None:
        if disposition == SourceDisposition.RENAMED_MIGRATED:
            await self._rename_migrated(plan)
            return
        if disposition != SourceDisposition.REMOVED:
            raise PermanentError(Reason.UNSUPPORTED_DISPOSITION, f"libvirt VMs are removed, not {disposition.value}")

        def disks(conn: Any) -> list[str] | None:
            dom = self._lookup(conn, plan.spec.source.name)
            if dom is None:
                return None
            if dom.isActive():
                # Never remove a running copy: the target copy is verified, but this one still runs.
                raise PermanentError(Reason.SOURCE_STILL_RUNNING, f"{dom.name()} still runs on {self.access.name}")
            # A disk another domain here also uses is that domain's too: it stays.
            others = {
                d.path
                for other in conn.listAllDomains(0)
                if other.UUIDString() != dom.UUIDString()
                for d in _disks(ET.fromstring(other.XMLDesc(0)))
            }
            return [d.path for d in _disks(ET.fromstring(dom.XMLDesc(0))) if d.path not in others]

        files = await self.libvirtd.call("reading the source's disks", disks)
        if files is None:
            return
        # The disks go first, the definition last: the files to remove are read from the definition, so
        # a pass cut short in between (an operator killed) finds the domain still there and finishes;
        # the other way round its disks were left behind for good once the domain was gone.
        if plan.mode == Mode.LIVE and files:
            # A live copy left disks on storage both hosts share where they were: the target runs from
            # them now. Proven again just before anything is removed, in the same command as the removal.
            files = await self._remove_local(plan.target, files, plan.uid)
        elif files:
            await self.ssh.run(["rm", "-f", "--", *files])
        if files:
            await self._refresh_pools(files)
            # An earlier offline migration put them in <path>/<UUID>/: that directory goes too, once empty.
            own = {str(PurePosixPath(f).parent) for f in files if PurePosixPath(f).parent.name == plan.ve.uuid}  # type: ignore[union-attr]
            if own:
                await self.ssh.run(["rmdir", "--ignore-fail-on-non-empty", "--", *own], check=False)

        def remove(conn: Any) -> None:
            dom = self._lookup(conn, plan.spec.source.name)
            if dom is None:
                return
            if dom.isActive():
                raise PermanentError(Reason.SOURCE_STILL_RUNNING, f"{dom.name()} still runs on {self.access.name}")
            flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            dom.undefineFlags(flags | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)

        await self.libvirtd.call("removing the source domain", remove)

    async def _refresh_pools(self, removed: list[str]) -> None:
        """Tell libvirt's storage pools that files are gone. A directory pool keeps its list of volumes,
        and a disk-copying migration into this host later skips creating a disk the pool still lists
        (qemuMigrationDstPrecreateDisk), so QEMU fails to open it: moving a VM back here would fail."""

        def refresh(conn: Any) -> None:
            for directory in sorted({str(PurePosixPath(f).parent) for f in removed}):
                try:
                    conn.storagePoolLookupByTargetPath(directory).refresh(0)
                except libvirt.libvirtError:
                    continue  # no pool there (or an inactive one): nothing listed the file

        await self.libvirtd.call("refreshing storage pools", refresh)

    async def _rename_migrated(self, plan: MigrationPlan) -> None:
        """A container's source, as prlctl leaves it: the private area renamed `<dir>.migrated`, the
        configuration kept as `<name>.xml.migrated` in libvirt's configuration directory, and the domain
        undefined. Each step may be repeated, so a pass interrupted half-way is finished by the next."""

        def read(conn: Any) -> tuple[str, str | None] | None:
            dom = self._lookup(conn, plan.spec.source.name)
            if dom is None:
                return None
            if dom.isActive():
                raise PermanentError(Reason.SOURCE_STILL_RUNNING, f"{dom.name()} still runs on {self.access.name}")
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE)
            return xml, _private_area(ET.fromstring(xml))

        found = await self.libvirtd.call("reading the source container", read)
        if found is None:
            return
        xml, private = found
        name = ET.fromstring(xml).findtext("name") or plan.spec.source.name
        # mv -T refuses to move into an existing <dir>.migrated (an earlier migration's): nothing is merged.
        rename = 'if [ -e "$1" ]; then mv -T -- "$1" "$1.migrated"; fi; cat >"$2.tmp" && mv -- "$2.tmp" "$2"'
        config = f"{LXC_CONFIG_DIR}/{name}.xml.migrated"
        await self.ssh.run(["sh", "-c", rename, "sh", private or "", config], input=xml)
        await self.libvirtd.call("undefining the source container", lambda c: self._lookup(c, name).undefine())

    async def forget_job(self, plan: MigrationPlan) -> None:
        await hostjob.forget(self.ssh, plan.uid)

    # -- the target -------------------------------------------------------------------------
    async def verify_target(self, plan: MigrationPlan, seen: Collection[str] = ()) -> bool:
        def ours(conn: Any) -> list[str] | None:
            """The copy's disk paths when the domain is this migration's and in the right state."""
            dom = self._lookup(conn, _target_name(plan))
            if dom is None:
                return None
            root = ET.fromstring(dom.XMLDesc(0))
            if _migration_uid(root) != plan.uid or not dom.isPersistent():
                return None
            # Paused here means paused by a person (a paused VE moves live and stays paused); a domain
            # still paused by the migration itself reads MIGRATING, and is not a finished copy.
            if plan.mode == Mode.LIVE and _state(dom) not in (VEState.RUNNING, VEState.PAUSED):
                return None
            private = _private_area(root)
            return [d.path for d in _disks(root)] + ([private] if private else [])

        paths = await self.libvirtd.call("verifying the target copy", ours)
        if paths is None:
            return False
        # The job compared sha256 sums on both ends before defining the domain; the files must be there.
        # Those the job itself found here at its end are not looked for again (an SSH command fewer).
        unseen = [path for path in paths if path not in seen]
        if not unseen:
            return True
        present = await self.ssh.run(
            ["sh", "-c", 'for f in "$@"; do [ -e "$f" ] || exit 1; done', "sh", *unseen], check=False
        )
        return present.ok

    async def target_leftovers(self, plan: MigrationPlan) -> bool:
        def ours(conn: Any) -> bool:
            dom = self._lookup(conn, _target_name(plan))
            return dom is not None and _migration_uid(ET.fromstring(dom.XMLDesc(0))) == plan.uid

        if await self.libvirtd.call("looking for leftovers", ours):
            return True
        owned = await self.ssh.run(["sh", "-c", _OWNED, "sh", _record(plan)])
        return bool(owned.stdout.strip())

    async def cleanup_target(self, plan: MigrationPlan) -> None:
        """Remove this migration's half-built copy: its domain (only an inactive one tagged with this
        migration's UID) and exactly the files and directories the job recorded as it created them,
        each only while the path still holds the very file recorded."""

        def remove(conn: Any) -> None:
            dom = self._lookup(conn, _target_name(plan))
            if dom is None or _migration_uid(ET.fromstring(dom.XMLDesc(0))) != plan.uid:
                return  # not this migration's: never touched
            if dom.isActive():
                # It may be the only running copy (post-copy, or a job that finished unseen): never stopped here.
                raise PermanentError(Reason.TARGET_ACTIVE, f"{dom.name()} runs on {self.access.name}; left as it is")
            if dom.isPersistent():
                if conn.getType() == "LXC":  # takes no undefine flags: it has no saved state or NVRAM
                    dom.undefine()
                else:
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)

        await self.libvirtd.call("removing the half-built target", remove)
        out = (await self.ssh.run(["sh", "-c", _REMOVE_OWNED, "sh", _record(plan)])).stdout
        removed = [line[len("removed ") :] for line in out.splitlines() if line.startswith("removed ")]
        kept = [line[len("kept ") :] for line in out.splitlines() if line.startswith("kept ")]
        if removed:
            await self._refresh_pools(removed)
        if kept:
            raise PermanentError(
                Reason.TARGET_NOT_EMPTY,
                f"left on {self.access.name}: {', '.join(kept)[:500]} (created by this migration, but it holds "
                "files this migration did not make)",
            )
