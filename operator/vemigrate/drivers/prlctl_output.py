"""Reading what prlctl and prlsrvctl print: `list -a -i -j`, `snapshot-list`, `prlsrvctl info -j`,
`prlsrvctl net list -j`, the progress and result lines of `prlctl migrate`, and its exit codes.

Shapes learnt from the public prlctl sources (github.com/OpenVZ/prlctl: PrlOutFormatter.cpp writes the
JSON, PrlVm.cpp `append_configuration` and PrlDev.cpp the per-VE keys, Utils.cpp `print_procent`
the progress lines and `prlerr2exitcode` the exit codes, PrlSnapshot.cpp the snapshot list) and its
man page. Pure functions: no I/O here, so the recorded outputs in tests/unit/fixtures/prlctl/ test them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vemigrate.api.host import VEKind
from vemigrate.api.reasons import Reason
from vemigrate.core.observation import ErrorClass, NFSFacts, VEFacts, VEState
from vemigrate.drivers.jobfailure import JobFailure

MIB = 1024 * 1024

# prlctl's state words (Utils.cpp vmstate2str) -> ours. Transitional states are "other": the VEState
# check then refuses to start, which is what a migration of a VE half-way through stopping deserves.
_STATES = {
    "running": VEState.RUNNING,
    "paused": VEState.PAUSED,
    "stopped": VEState.STOPPED,
    "suspended": VEState.SUSPENDED,
    "migrating": VEState.MIGRATING,
}

# Exit codes of prlctl (Utils.cpp prlerr2exitcode): 0 success; 1 the command line was refused before
# anything ran (CmdParam.cpp returns invalid_action); 253 the dispatcher could not be reached; 254 the
# VE is frozen; 255 any other PRL_ERR_* (error codes are negative or above 255). A signal that killed
# prlctl outright shows as 128 + signal number (the pty wrapper reports it that way).
EXIT_USAGE = 1
EXIT_NO_DISPATCHER = 253
EXIT_FROZEN = 254
EXIT_ERROR = 255

_PERCENT = re.compile(r"(\d{1,3})\s*%")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": MIB, "K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}
_TRANSIENT = re.compile(
    r"timed? ?out|timeout|connection (reset|refused|closed|lost)|unable to connect|no route|broken pipe|"
    r"network is unreachable|temporarily|try again|lost connection|cannot connect",
    re.IGNORECASE,
)
_CANCELLED = re.compile(r"cancel", re.IGNORECASE)


def _size(text: object) -> int | None:
    """'1024Mb', '64Mb', '2G' (prlctl prints sizes in MiB with a unit suffix) -> bytes."""
    if isinstance(text, int):
        return text * MIB
    match = _SIZE.match(str(text)) if text is not None else None
    if match is None:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _mac(text: str) -> str:
    """'001C42AB12CD' or '00:1c:42:ab:12:cd' -> '00:1c:42:ab:12:cd'."""
    hexits = re.sub(r"[^0-9a-fA-F]", "", text).lower()
    return ":".join(hexits[i : i + 2] for i in range(0, len(hexits), 2)) if len(hexits) == 12 else text.lower()


def strip_uuid(text: str) -> str:
    return text.strip().strip("{}").lower()


@dataclass(frozen=True)
class ListedVE:
    """One entry of `prlctl list -a -i -j`, with what only this listing knows (its home and CT id)."""

    facts: VEFacts
    home: str | None
    env_id: str | None
    images: tuple[str, ...]

    def matches(self, name: str) -> bool:
        wanted = name.strip()
        return wanted in (self.facts.name, self.env_id) or strip_uuid(wanted) == self.facts.uuid


def parse_list(text: str) -> list[ListedVE]:
    """`prlctl list -a -i -j`: a JSON array, one object per VE."""
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        raise ValueError(f"prlctl list -j printed something that is not JSON: {exc}") from exc
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError("prlctl list -j printed neither a list nor an object")
    return [_listed(entry) for entry in data if isinstance(entry, dict)]


def _listed(entry: Mapping[str, Any]) -> ListedVE:
    hardware: Mapping[str, Any] = entry.get("Hardware") or {}
    kind = VEKind.CONTAINER if str(entry.get("Type", "VM")).upper() == "CT" else VEKind.VM
    cpu = hardware.get("cpu") or {}
    cpus = cpu.get("cpus")
    memory = (hardware.get("memory") or {}).get("size")
    bridges: list[str] = []
    macs: list[str] = []
    images: list[str] = []
    for key, device in hardware.items():
        if not isinstance(device, Mapping):
            continue
        if re.fullmatch(r"net\d+|venet0", key):
            # A bridged adapter names its virtual network ("network"); a CT's bridge adapter says so.
            network = device.get("network") or device.get("iface")
            if network:
                bridges.append(str(network))
            if device.get("mac"):
                macs.append(_mac(str(device["mac"])))
        elif re.fullmatch(r"hdd\d+", key) and device.get("image"):
            images.append(str(device["image"]))
    home = str(entry["Home"]).rstrip("/") if entry.get("Home") else None
    state = _STATES.get(str(entry.get("State", "")).lower(), VEState.OTHER)
    facts = VEFacts(
        name=str(entry.get("Name", "")),
        uuid=strip_uuid(str(entry.get("ID", ""))),
        type=kind,
        state=state,
        memory_bytes=_size(memory),
        vcpus=int(cpus) if isinstance(cpus, int) or (isinstance(cpus, str) and cpus.isdigit()) else 1,
        bridges=tuple(bridges),
        storage_path=home,
        disk_paths=tuple(images),
        macs=tuple(macs),
        guest_os_installed=_guest_os(entry),
        nfs_server=nfs_server(str(entry["Features"])) if kind == VEKind.CONTAINER and "Features" in entry else None,
    )
    env_id = str(entry["EnvID"]) if entry.get("EnvID") not in (None, "") else None
    return ListedVE(facts=facts, home=home, env_id=env_id, images=tuple(images))


def nfs_server(features: str) -> bool | None:
    """A container's `Features` (PrlVm.cpp append_configuration, Utils.cpp feature2str: `name:on|off `
    for each feature the dispatcher knows): whether `nfsd`, the in-container NFS server, is on."""
    for word in features.split():
        name, _, value = word.partition(":")
        if name == "nfsd":
            return value == "on"
    return None


def inside_container(text: str) -> tuple[bool | None, NFSFacts | None]:
    """What `CT_INSIDE` printed inside a running container: whether it uses IPSec (an IKE daemon runs
    or the kernel holds security associations), and its NFS mounts as the live-migration rules see
    them. (None, None) when it printed nothing usable."""
    said: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if value.strip().isdigit():
            said[key] = int(value)
    if "ike_daemons" not in said or "nfs_mounts" not in said:
        return None, None
    ipsec = said["ike_daemons"] > 0 or said.get("xfrm_states", 0) > 0
    nfs = NFSFacts(
        client=said["nfs_mounts"] > 0,
        open_device_files=said.get("nfs_open_devices", 0),
        remote_locks=said.get("nfs_remote_locks", 0) > 0,
        overmounted=said.get("nfs_overmounted", 0) > 0,
    )
    return ipsec, nfs


def _guest_os(entry: Mapping[str, Any]) -> bool | None:
    """For the Virtuozzo 6 rule 'the VM must have a guest OS installed': guest tools seen, or an OS
    type set, is evidence; prlctl has no direct flag for it."""
    tools = (entry.get("GuestTools") or {}).get("state")
    if tools in ("installed", "possibly_installed", "outdated"):
        return True
    os_name = str(entry.get("OS", "")).strip().lower()
    if os_name in ("", "none", "other"):
        return None
    return True


def count_snapshots(text: str) -> int:
    """`prlctl snapshot-list <VE>` (PrlSnapshot.cpp print_list): an optional header, then one line
    'PARENT_ID [*]SNAPSHOT_ID' per snapshot."""
    count = 0
    for line in text.splitlines():
        words = line.replace("*", " ").split()
        if not words or words[0] == "PARENT_SNAPSHOT_ID":
            continue
        count += 1
    return count


@dataclass(frozen=True)
class ServerInfo:
    """`prlsrvctl info --full -j`, the keys the checks use."""

    uuid: str | None
    hostname: str | None
    version: str | None
    vm_home: str | None
    cpu_model: str | None
    cpu_features: tuple[str, ...]


def parse_server_info(text: str) -> ServerInfo:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"prlsrvctl info -j printed something that is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("prlsrvctl info -j printed no JSON object")
    features = str(data.get("CPU features") or "").split()
    # Non-bit fields print as name=value and unnamed reserved bits as RESERVED(...): not features.
    names = tuple(f for f in features if "=" not in f and not f.startswith("RESERVED("))
    return ServerInfo(
        uuid=strip_uuid(str(data["ID"])) if data.get("ID") else None,
        hostname=str(data["Hostname"]) if data.get("Hostname") else None,
        version=str(data["Version"]) if data.get("Version") else None,
        vm_home=str(data["VM home"]).rstrip("/") or "/" if data.get("VM home") else None,
        cpu_model=str(data["CPU model"]) if data.get("CPU model") else None,
        cpu_features=names,
    )


def parse_networks(text: str) -> list[str]:
    """`prlsrvctl net list -j`: the IDs of bridged virtual networks (what VEs' adapters name)."""
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        raise ValueError(f"prlsrvctl net list -j printed something that is not JSON: {exc}") from exc
    if isinstance(data, dict):
        data = [data]
    return [
        str(n["Network ID"])
        for n in data
        if isinstance(n, dict) and n.get("Network ID") and str(n.get("Type", "bridged")) == "bridged"
    ]


# -- prlctl migrate's output ------------------------------------------------------------------
def output_lines(log: str) -> list[str]:
    """The log of a job run under a pty: progress updates rewrite one line with '\\r', and the pty
    turns '\\n' into '\\r\\n'. Every update becomes a line of its own here."""
    return [part.strip() for part in re.split(r"[\r\n]+", log) if part.strip()]


def last_percent(log: str) -> int | None:
    """The last 'Operation progress ... NN%' that prlctl printed (only on a terminal: print_procent)."""
    for line in reversed(output_lines(log)):
        if line.lower().startswith("operation progress"):
            match = _PERCENT.search(line)
            if match:
                return min(int(match.group(1)), 100)
    return None


def error_lines(log: str) -> list[str]:
    """What prlctl said went wrong: its 'Failed to ...' line and the detail lines after it. The
    deprecation WARNING newer builds print first is not an error."""
    lines = output_lines(log)
    start = next((i for i, line in enumerate(lines) if line.lower().startswith("failed to")), None)
    if start is None:
        lines = [line for line in lines if not line.startswith("WARNING:") and "progress" not in line.lower()]
        return lines[-1:]
    return [line for line in lines[start:] if not line.lower().startswith("operation progress")]


def classify_exit(exit_status: int | None, log: str) -> JobFailure:
    """Exit code and output of a failed `prlctl migrate` -> what the operator reports: failed or
    cancelled (`aborted`), why, and whether another attempt may pass. No exit status reads as -1."""
    if exit_status is None:
        exit_status = -1
    detail = " ".join(error_lines(log))[:1000] or f"prlctl migrate exited {exit_status} without a message"
    if exit_status == EXIT_USAGE:
        return JobFailure(Reason.INVALID_ARGUMENTS, ErrorClass.PERMANENT, f"prlctl refused the command line: {detail}")
    if exit_status == EXIT_NO_DISPATCHER:
        return JobFailure(
            Reason.DISPATCHER_UNAVAILABLE, ErrorClass.RETRYABLE, f"prlctl could not reach the dispatcher: {detail}"
        )
    if exit_status == EXIT_FROZEN:
        return JobFailure(Reason.VE_FROZEN, ErrorClass.RETRYABLE, f"the VE is frozen: {detail}")
    if exit_status > 128 and exit_status != EXIT_ERROR:
        return JobFailure(
            Reason.JOB_KILLED, ErrorClass.RETRYABLE, f"prlctl was killed by signal {exit_status - 128}: {detail}"
        )
    if any(line.lower().startswith("canceling the migration") for line in output_lines(log)) or (
        _CANCELLED.search(detail) is not None
    ):
        return JobFailure(Reason.ABORTED, ErrorClass.PERMANENT, detail, aborted=True)
    transient = _TRANSIENT.search(detail) is not None
    return JobFailure(Reason.MIGRATION_FAILED, ErrorClass.RETRYABLE if transient else ErrorClass.PERMANENT, detail)


def succeeded(log: str) -> bool:
    """prlctl's own success line ('The VM/CT has been successfully migrated.')."""
    return any("successfully migrated" in line for line in output_lines(log))
