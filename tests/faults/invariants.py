"""DESIGN.md's invariants, checked from outside the operator: libvirt and the files on both lab hosts
(after the run, and sampled during it: tests/faults/watch.py), the object's status, and the operator's
metrics; and whether the scenario's fault landed where it says."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import libvirt

from tests.faults.watch import Samples
from vemigrate_dev.lab import Lab, LabInfo
from vemigrate_dev.lab.vm import VMInfo

FINAL = ("Succeeded", "Failed", "Cancelled")
JOBS_DIR = "/var/lib/libvirt/vemigrate/jobs"
POOL = "/var/lib/libvirt/images"


@dataclass
class Outcome:
    scenario: str
    phase: str
    reason: str
    lost: bool  # no complete copy of the VE on any host, at the end or at a sampled instant
    duplicate: bool  # more than one copy running, at the end or at a sampled instant
    down: bool  # the VE ran before the migration and runs nowhere now
    leftovers: list[str] = field(default_factory=list)
    counted: bool = True  # the operator's metrics counted the outcome
    note: str = ""
    expected: tuple[str, ...] = ()  # the final phases this scenario may end in (any, when empty)
    foreign: list[str] = field(default_factory=list)  # files not the VE's that changed or went
    differs: list[str] = field(default_factory=list)  # after success: target disks unlike the source's
    landed: bool = False  # the fault happened in the phase it names while its work still ran
    landing: str = ""  # what was seen when it was injected
    retried: bool = False  # the first run's fault did not land; this is the second
    samples: str = ""  # what the sampler saw
    message: str = ""  # the status's failure message, shown when the outcome is not sound

    @property
    def sound(self) -> bool:
        """Every invariant held, whether or not the fault landed."""
        return (
            self.phase in FINAL
            and bool(self.reason)
            and (not self.expected or self.phase in self.expected)
            and not (self.lost or self.duplicate or self.down or self.leftovers or self.foreign or self.differs)
            and self.counted
        )

    @property
    def ok(self) -> bool:
        return self.sound and self.landed

    def explain(self) -> str:
        return (
            f"{self.scenario}: phase {self.phase} ({self.reason or 'no reason'})"
            + (f", expected {' or '.join(self.expected)}" if self.expected else "")
            + f", fault landed={self.landed} ({self.landing or 'not injected'}), lost={self.lost}, "
            f"duplicate={self.duplicate}, down={self.down}, leftovers={self.leftovers}, foreign data "
            f"touched={self.foreign}, target disks differ={self.differs}, counted={self.counted}; sampled: "
            f"{self.samples or 'nothing'}"
            + (f"; {self.note}" if self.note else "")
            + (f"; failure message: {self.message}" if self.message and not self.sound else "")
        )


def _exists(host: str, path: str) -> bool:
    return Lab.exec(host, ["test", "-e", path]).returncode == 0


def _listing(host: str, path: str) -> str:
    """Every file under `path` with the start of its text, for a failure message."""
    show = 'find "$1" -type f | while read -r f; do printf "%s: %s; " "$f" "$(head -c 200 "$f" | tr "\\n" " ")"; done'
    return Lab.exec(host, ["sh", "-c", show, "sh", path], capture=True).stdout.strip()[:600]


def md5(host: str, path: str) -> str:
    out = Lab.exec(host, ["md5sum", path], capture=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[0]


def _copy(lab: LabInfo, host: str, uuid: str) -> tuple[bool, bool, list[str]] | None:
    """(complete: every disk file there, running, disk paths) of the domain with this UUID, or None."""
    conn = lab.host(host).connect()
    try:
        try:
            dom = conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError:
            return None
        disks = [str(s.get("file")) for s in ET.fromstring(dom.XMLDesc(0)).findall("./devices/disk/source[@file]")]
        running = dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING  # a paused copy runs nothing
        return all(_exists(host, d) for d in disks), running, disks
    finally:
        conn.close()


def examine(
    lab: LabInfo,
    scenario: str,
    vm: VMInfo,
    body: dict[str, Any],
    *,
    was_running: bool,
    source_md5: str | None = None,
    counted: bool = True,
    note: str = "",
    foreign: tuple[str, ...] = (),
    samples: Samples | None = None,
    expected: tuple[str, ...] = (),
    shared: bool = False,
) -> Outcome:
    """Where the VE is now, and what this migration left behind, against what its phase claims.
    `foreign`: files on the target that were there before (another VE's), never leftovers.
    `shared`: the VE's disk is on storage both hosts share: one file, which must stay whatever the end
    (its loss shows as a lost VE: neither domain is complete without it).
    `samples`: what was sampled during the run; a lost VE or two running copies seen at any instant
    count as if seen at the end."""
    status = body.get("status") or {}
    phase = str(status.get("phase", ""))
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    reason = (status.get("failure") or {}).get("reason") or conditions.get("Succeeded", {}).get("reason", "")
    if phase not in FINAL:
        reason = ""
    source, target = _copy(lab, "lab1", vm.uuid), _copy(lab, "lab2", vm.uuid)
    copies = [c for c in (source, target) if c is not None and c[0]]
    runners = [c for c in (source, target) if c is not None and c[1]]
    leftovers: list[str] = []
    if phase == "Succeeded":
        if source is not None:
            leftovers.append("the source domain was not removed")
        elif _exists("lab1", vm.disk) and not shared:
            leftovers.append(f"{vm.disk} on the source (the domain went, its disk stayed)")
    else:
        if target is not None and source is not None:
            leftovers.append("a domain on the target")
        for path in (f"{POOL}/{vm.uuid}", *([] if shared else [vm.disk])):
            if path not in foreign and (target is None or path not in target[2]) and _exists("lab2", path):
                leftovers.append(f"{path} on the target")
        if source_md5 is not None and source is not None and md5("lab1", vm.disk) != source_md5:
            leftovers.append("the source disk changed")
    uid = body["metadata"]["uid"]
    if phase in FINAL and _exists("lab1", f"{JOBS_DIR}/{uid}"):
        leftovers.append("the job's files on the source")
    if phase in FINAL and _exists("lab2", f"{JOBS_DIR}/{uid}"):
        leftovers.append(f"the job's record on the target ({_listing('lab2', f'{JOBS_DIR}/{uid}')})")
    return Outcome(
        scenario=scenario,
        phase=phase,
        reason=str(reason),
        lost=not copies or (samples is not None and samples.lost),
        duplicate=len(runners) > 1 or (samples is not None and samples.duplicate),
        down=was_running and not runners,
        leftovers=leftovers,
        counted=counted,
        note=note,
        expected=expected,
        samples=samples.describe() if samples is not None else "",
        message=str((status.get("failure") or {}).get("message", "")),
    )


def table(by_scenario: dict[str, list[Outcome]]) -> str:
    rows = [
        "| scenario | runs | fault landed | VEs lost | duplicate runners | VE left down | leftovers "
        "| foreign data touched | target disk differs | final phase: reason |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, outcomes in by_scenario.items():
        finals = Counter(f"{o.phase or 'not final'}: {o.reason or '-'}" for o in outcomes)
        notes = sorted({o.note for o in outcomes if o.note})
        retried = sum(o.retried and o.landed for o in outcomes)
        landed = f"{sum(o.landed for o in outcomes)} of {len(outcomes)}" + (
            f" ({retried} on the retry)" if retried else ""
        )
        rows.append(
            f"| {scenario}{' (' + '; '.join(notes) + ')' if notes else ''} | {len(outcomes)} | {landed} "
            f"| {sum(o.lost for o in outcomes)} | {sum(o.duplicate for o in outcomes)} "
            f"| {sum(o.down for o in outcomes)} | {sum(1 for o in outcomes if o.leftovers)} "
            f"| {sum(1 for o in outcomes if o.foreign)} | {sum(1 for o in outcomes if o.differs)} "
            f"| {', '.join(f'{k} (x{v})' if v > 1 else k for k, v in finals.items())} |"
        )
    return "\n".join(rows)
