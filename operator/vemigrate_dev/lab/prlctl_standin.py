"""A STAND-IN for Virtuozzo's `prlctl` and `prlsrvctl` on lab hosts. It is not Virtuozzo.

No Virtuozzo node can exist in this lab, so lab hosts get this program as `prlctl` and `prlsrvctl`
(wrappers in /usr/local/sbin of each host's mount namespace, see vemigrate_dev/lab/host.py). It implements
the documented command-line contract of the commands the operator's prlctl driver runs (arguments,
option errors and exit codes, output and progress lines, `-j` JSON), as learnt from the public prlctl
sources (github.com/OpenVZ/prlctl: CmdParam.cpp, PrlVm.cpp, PrlOutFormatter.cpp, Utils.cpp,
PrlCleanup.cpp) and `man prlctl`, and does the real work with libvirt underneath, so a VM really
moves between lab hosts:

- live (running or paused VM): `virsh migrate --live --p2p --persistent --undefinesource`, local
  disks copied inside QEMU's migration TLS (`--tls --copy-storage-all`), or `--tunnelled` when there
  is no disk to copy; `--no-tunnel` is a plain QEMU stream; then the source's disk files are removed;
- offline (stopped VM, stopped container): every disk (or the container's private area) streamed
  over SSH (zstd unless `--no-compression`), sha256-checked, then the VE defined on the target in
  `<--dst>/<VE_UUID>/`; the source VM is removed, the source container's private area and config
  are renamed `.migrated`, `--clone` keeps the source and gives the copy a new UUID and MACs.

Besides: `prlctl exec <CT> [--without-shell] <command>` in a running container (entering its LXC
namespaces), and `prlctl set <CT> --features name:on|off`, shown as `Features` by `list -i`.

What it does not do: Virtuozzo's dispatcher, storage clusters, CRIU (live containers are refused),
suspended VMs, Windows SIDs (`--changesid` is accepted and does nothing), password logins, `exec` in
VMs (no guest tools).

Run as `python3 prlctl_standin.py prlctl|prlsrvctl ARGS...`; standard library only (it runs under the
system Python inside lab hosts).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import FrameType

QEMU = "qemu:///system"
LXC = "lxc:///system"
VM_HOME = "/var/lib/libvirt/images"
CT_HOME = "/var/lib/libvirt/images/private"
LXC_CONFIG = "/etc/libvirt/lxc"
VERSION = "Server 0.0.0 (vemigrate prlctl stand-in over libvirt)"
CHUNK = 1024 * 1024

# Exit codes as prlctl's prlerr2exitcode gives them.
EXIT_USAGE = 1
EXIT_NO_DISPATCHER = 253
EXIT_ERROR = 255


class Failure(Exception):
    """Ends the command: message on stderr, exit status."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def parse_xml(text: str | bytes) -> ET.Element:
    """XML from this host's own libvirtd (or a copy of it), never from a user."""
    return ET.fromstring(text)  # noqa: S314


def run(argv: Sequence[str], *, input: bytes | None = None, check: bool = True) -> str:
    done = subprocess.run(list(argv), input=input, capture_output=True, check=False)
    if check and done.returncode != 0:
        said = (done.stderr or done.stdout).decode(errors="replace").strip()
        raise Failure(f"{' '.join(argv[:4])}: {said}")
    return done.stdout.decode(errors="replace")


def virsh(uri: str, *args: str, check: bool = True) -> str:
    return run(["virsh", "-q", "-c", uri, *args], check=check)


def tty() -> bool:
    return os.isatty(sys.stdout.fileno())


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def progress(percent: int) -> None:
    """prlctl's progress line, printed only on a terminal, as prlctl does."""
    if not tty():
        return
    sys.stdout.write(f"\rOperation progress {'   ' if percent == 100 else '...'}{percent:2d}%")
    if percent == 100:
        sys.stdout.write("\n")
    sys.stdout.flush()


# -- what libvirt knows, in prlctl's terms ---------------------------------------------------
@dataclass
class VE:
    uri: str
    name: str
    uuid: str
    kind: str  # VM | CT
    state: str  # running | paused | stopped | suspended | ...
    xml: ET.Element
    disks: list[tuple[str, str]] = field(default_factory=list)  # (path, format)
    private: str | None = None  # containers' root directory

    @property
    def home(self) -> str:
        if self.kind == "CT":
            return self.private or CT_HOME
        return str(PurePosixPath(self.disks[0][0]).parent) if self.disks else VM_HOME

    @property
    def word(self) -> str:
        return self.kind


def _connected(uri: str) -> bool:
    return subprocess.run(["virsh", "-q", "-c", uri, "version"], capture_output=True, check=False).returncode == 0


def _uris() -> list[str]:
    if not _connected(QEMU):
        raise Failure("Unable to connect to the dispatcher (libvirtd does not answer)", EXIT_NO_DISPATCHER)
    return [QEMU, LXC] if _connected(LXC) else [QEMU]


def _state(uri: str, name: str) -> str:
    text = virsh(uri, "domstate", name).strip()
    if text == "running":
        return "running"
    if text == "paused":
        return "paused"
    if text in ("shut off", "shutdown", "crashed"):
        info = virsh(uri, "dominfo", name, check=False)
        return "suspended" if re.search(r"Managed save:\s+yes", info) else "stopped"
    return "invalid"


def load(uri: str, name: str) -> VE:
    root = parse_xml(virsh(uri, "dumpxml", "--inactive", name))
    disks = []
    for disk in root.findall("./devices/disk[@device='disk']"):
        source, driver = disk.find("source"), disk.find("driver")
        if source is not None and source.get("file"):
            disks.append((str(source.get("file")), driver.get("type", "raw") if driver is not None else "raw"))
    private = None
    for fs in root.findall("./devices/filesystem"):
        target, source = fs.find("target"), fs.find("source")
        if target is not None and target.get("dir") == "/" and source is not None:
            private = source.get("dir")
    return VE(
        uri=uri,
        name=root.findtext("name", ""),
        uuid=root.findtext("uuid", ""),
        kind="CT" if uri == LXC else "VM",
        state=_state(uri, name),
        xml=root,
        disks=disks,
        private=private,
    )


def all_ves() -> list[VE]:
    found = []
    for uri in _uris():
        for name in virsh(uri, "list", "--all", "--name").split():
            try:
                found.append(load(uri, name))
            except Failure:
                continue  # undefined between the listing and the lookup: no longer there
    return found


def find(wanted: str) -> VE | None:
    """By name or UUID (braces allowed, as prlctl takes them)."""
    key = wanted.strip().strip("{}")
    for uri in _uris():
        # dominfo resolves a name, an ID or a UUID (domuuid takes names and IDs only).
        found = re.search(r"^UUID:\s+(\S+)", virsh(uri, "dominfo", key, check=False), re.MULTILINE)
        if found:
            uuid = found.group(1)
            try:
                return load(uri, uuid)
            except Failure:
                return None
    return None


def _mb(nbytes: int) -> str:
    return f"{max(nbytes // (1024 * 1024), 1)}Mb"


def describe(ve: VE) -> dict[str, object]:
    """One VE as `prlctl list -i -j` prints it (PrlVm.cpp append_configuration, PrlDev.cpp)."""
    memory_kib = int(ve.xml.findtext("memory", "0"))
    vcpus = int(ve.xml.findtext("vcpu", "1"))
    hardware: dict[str, object] = {
        "cpu": {"sockets": 1, "cpus": vcpus, "cores": vcpus, "VT-x": True, "hotplug": False, "accl": "high"},
        "memory": {"size": _mb(memory_kib * 1024), "hotplug": False},
    }
    for i, (path, fmt) in enumerate(ve.disks):
        info = json.loads(run(["qemu-img", "info", "-U", "--output=json", path], check=False) or "{}")
        hardware[f"hdd{i}"] = {
            "enabled": True,
            "port": f"virtio:{i}",
            "image": path,
            "type": "expanded" if fmt == "qcow2" else "plain",
            "size": _mb(int(info.get("virtual-size", 0))),
            "state": "connected",
        }
    for i, iface in enumerate(ve.xml.findall("./devices/interface")):
        source, mac = iface.find("source"), iface.find("mac")
        hardware[f"net{i}"] = {
            "dev": f"veth{i}",
            "enabled": True,
            "network": source.get("bridge", "") if source is not None else "",
            "mac": (mac.get("address", "") if mac is not None else "").replace(":", "").upper(),
            "card": "virtio",
            "state": "connected",
        }
    return {
        "ID": ve.uuid,
        "EnvID": ve.name if ve.kind == "CT" else ve.uuid,
        "Name": ve.name,
        "Description": "",
        "Type": ve.kind,
        "State": ve.state,
        "OS": "linux",
        "Template": "no",
        "Uptime": "0",
        "Home": ve.home.rstrip("/") + "/",
        "Owner": "root",
        "GuestTools": {"state": "not_installed"},
        "Autostart": "off",
        "Hardware": hardware,
        **({"Features": features_text(ve)} if ve.kind == "CT" else {}),
    }


# The container features `prlctl set --features` switches (man prlctl), in Utils.cpp features_map
# order, all off until set; kept beside the container's libvirt config, as Virtuozzo keeps them in its.
FEATURES = ("sysfs", "nfs", "sit", "ipip", "ppp", "ipgre", "bridge", "nfsd", "time")


def _features_file(ve: VE) -> Path:
    return Path(LXC_CONFIG) / f"{ve.name}.features.json"


def features_text(ve: VE) -> str:
    """As PrlVm.cpp prints `Features` (Utils.cpp feature2str): `name:on|off ` for each."""
    try:
        on = json.loads(_features_file(ve).read_text())
    except (OSError, ValueError):
        on = {}
    return "".join(f"{name}:{'on' if on.get(name) else 'off'} " for name in FEATURES)


def cmd_set(args: list[str]) -> int:
    """Only `prlctl set <CT> --features name:on|off[,...]`: what the operator's messages tell a user to run."""
    names = [a for a in args if not a.startswith("-")]
    ve = find(names[0]) if names else None
    if ve is None:
        raise Failure(f"The {names[0] if names else ''} virtual machine does not exist.")
    if "--features" not in args or args.index("--features") + 1 >= len(args) or ve.kind != "CT":
        raise Failure("this stand-in's set takes only --features <name>:on|off[,...] for a container", EXIT_USAGE)
    try:
        on = json.loads(_features_file(ve).read_text())
    except (OSError, ValueError):
        on = {}
    for item in args[args.index("--features") + 1].split(","):
        name, _, value = item.partition(":")
        if name not in FEATURES or value not in ("on", "off"):
            raise Failure(f"An incorrect value for --features is specified: {item}", EXIT_USAGE)
        on[name] = value == "on"
    _features_file(ve).write_text(json.dumps(on) + "\n")
    say(f"Configure features: {features_text(ve)}")
    say(f"The {ve.word} has been successfully configured.")
    return 0


def cmd_exec(args: list[str]) -> int:
    """`prlctl exec <CT> [--without-shell] <command> [arg ...]` (PrlVm.cpp: bash -c "command" unless
    --without-shell; standard input passed through). Containers only: a VM would need Guest Tools."""
    if not args:
        raise Failure("Incorrect exec usage.", EXIT_USAGE)
    ve = find(args[0])
    if ve is None:
        raise Failure(f"The {args[0]} virtual machine does not exist.")
    rest = args[1:]
    shell = "--without-shell" not in rest[:1]
    command = rest if shell else rest[1:]
    if not command:
        raise Failure("Incorrect exec usage.", EXIT_USAGE)
    if ve.kind != "CT":
        raise Failure(f"Failed to execute the command: the {ve.word} has no guest tools (stand-in: containers only).")
    if ve.state != "running":
        raise Failure(f"Failed to execute the command: the {ve.word} is not running.")
    argv = ["/bin/bash", "-c", " ".join(command)] if shell else command
    enter = ["virsh", "-q", "-c", ve.uri, "lxc-enter-namespace", ve.name, "--noseclabel", "--", *argv]
    return subprocess.run(enter).returncode


# -- prlctl list / snapshot-list / stop / delete ---------------------------------------------------
def cmd_list(args: list[str]) -> int:
    as_json = info = everything = no_header = False
    wanted: str | None = None
    for arg in args:
        if arg in ("-j", "--json"):
            as_json = True
        elif arg in ("-i", "--info"):
            info = True
        elif arg in ("-a", "--all"):
            everything = True
        elif arg in ("-H", "--no-header"):
            no_header = True
        elif arg.startswith("-"):
            raise Failure(f"Unrecognized option: {arg}", EXIT_USAGE)
        else:
            wanted = arg
    ves = all_ves()
    if wanted is not None:
        ves = [v for v in ves if wanted.strip("{}") in (v.name, v.uuid)]
        if not ves:
            raise Failure(f"The {wanted} virtual machine does not exist.")
    elif not everything:
        ves = [v for v in ves if v.state == "running"]
    if as_json:
        entries: list[dict[str, object]] = [
            describe(v) if info else {"uuid": v.uuid, "status": v.state, "ip_configured": "-", "name": v.name}
            for v in ves
        ]
        say(json.dumps(entries, indent=1))
        return 0
    if not no_header:
        say(f"{'UUID':<40} {'STATUS':<12} {'IP_ADDR':<15} T  NAME")
    for v in ves:
        say(f"{{{v.uuid}}} {v.state:<12} {'-':<15} {v.kind}  {v.name}")
    return 0


def cmd_snapshot_list(args: list[str]) -> int:
    names = [a for a in args if not a.startswith("-")]
    if not names:
        raise Failure("Incorrect snapshot-list usage.", EXIT_USAGE)
    ve = find(names[0])
    if ve is None:
        raise Failure(f"The {names[0]} virtual machine does not exist.")
    if "-H" not in args and "--no-header" not in args:
        say("PARENT_SNAPSHOT_ID                      SNAPSHOT_ID")
    if ve.kind != "VM":
        return 0
    current = virsh(ve.uri, "snapshot-current", "--name", ve.name, check=False).strip()
    for snap in virsh(ve.uri, "snapshot-list", "--name", ve.name).split():
        parent = virsh(ve.uri, "snapshot-parent", ve.name, snap, check=False).strip()
        mark = "*" if snap == current else " "
        say(f"{'{' + parent + '}' if parent else '':>38} {mark}{'{' + snap + '}':>38}")
    return 0


def cmd_stop(args: list[str]) -> int:
    names = [a for a in args if not a.startswith("-")]
    ve = find(names[0]) if names else None
    if ve is None:
        raise Failure(f"The {names[0] if names else ''} virtual machine does not exist.")
    say(f"Stopping the {ve.word}...")
    if ve.state in ("running", "paused"):
        virsh(ve.uri, "destroy" if "--kill" in args else "shutdown", ve.uuid)
    say(f"The {ve.word} has been successfully stopped.")
    return 0


def cmd_delete(args: list[str]) -> int:
    names = [a for a in args if not a.startswith("-")]
    ve = find(names[0]) if names else None
    if ve is None:
        raise Failure(f"The {names[0] if names else ''} virtual machine does not exist.")
    if ve.state in ("running", "paused"):
        raise Failure(f"Failed to delete the {ve.word}: it is {ve.state}; stop it first")
    say(f"Removing the {ve.word}...")
    remove_ve(ve)
    say(f"The {ve.word} has been successfully removed.")
    return 0


def remove_ve(ve: VE) -> None:
    flags = ["--managed-save", "--snapshots-metadata"] if ve.kind == "VM" else []
    virsh(ve.uri, "undefine", *flags, ve.uuid)
    for path, _ in ve.disks:
        Path(path).unlink(missing_ok=True)
    if ve.kind == "CT" and ve.private:
        run(["rm", "-rf", "--", ve.private])


# -- prlctl migrate ---------------------------------------------------------------------------
@dataclass
class Migrate:
    ve: str
    user: str
    server: str
    dst_id: str = ""
    location: str = ""
    clone: bool = False
    change_sid: bool = False
    tunnel: bool = True
    compression: bool = True
    ssh_opts: list[str] = field(default_factory=list)


def parse_migrate(args: list[str]) -> Migrate:
    """The command line as CmdParam.cpp get_migrate_param reads it, refusals and messages alike."""
    if len(args) < 2:
        raise Failure("Incorrect migrate usage.", EXIT_USAGE)
    src, dst = args[0], args[1]
    if "/" in src:
        node, _, src = src.partition("/")
        if node not in ("localhost", "127.0.0.1"):
            raise Failure(f"An incorrect value is specified for src: {node} (the stand-in migrates from here)", 1)
    dst_node, _, dst_id = dst.partition("/")
    login, at, hostport = dst_node.rpartition("@")
    if ":" in login:
        raise Failure("the stand-in takes no password on the command line: set up key authentication", EXIT_USAGE)
    server = hostport
    if hostport.startswith("["):
        server = hostport[1 : hostport.find("]")]
    elif hostport.count(":") == 1:
        server = hostport.split(":")[0]
    if not server:
        raise Failure(f"An incorrect value is specified for dst: {dst_node}", EXIT_USAGE)
    request = Migrate(ve=src, user=login if at else "root", server=server, dst_id=dst_id)
    remove_src = False
    i = 2
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        takes_value = name in ("--dst", "--location", "--ssh", "--securitylevel", "--sessionid", "-s", "-v")
        if takes_value and not eq:
            if i + 1 >= len(args):
                raise Failure(f"option requires an argument: {name}", EXIT_USAGE)
            value = args[i + 1]
            i += 1
        i += 1
        if name in ("--dst", "--location"):
            if not value.startswith("/"):
                raise Failure("An incorrect value for --dst is specified; relative paths are not allowed.", 1)
            request.location = value
        elif name in ("--clone", "--keep-src"):
            request.clone = True
        elif name == "--remove-src":
            remove_src = True
        elif name == "--changesid":
            request.change_sid = True
        elif name == "--no-tunnel":
            request.tunnel = False
        elif name == "--no-compression":
            request.compression = False
        elif name == "--ssh":
            request.ssh_opts = value.split()
        elif name in ("-f", "--force", "--ignore-existing-bundle", "--switch-template", "-v", "--securitylevel"):
            continue
        else:
            raise Failure(f"Unrecognized option: {arg}", EXIT_USAGE)
    if request.change_sid and not request.clone:
        raise Failure("The --changesid option can be used with --clone only", EXIT_USAGE)
    if remove_src and request.clone:
        raise Failure("The --remove-src option cannot be used with --clone", EXIT_USAGE)
    return request


class Cancelled(Exception):
    pass


class Job:
    """One migration: the signal handler (prlctl's cleanup hook) and the target's shell."""

    def __init__(self, request: Migrate) -> None:
        self.request = request
        self.cancelled = False
        self.on_cancel: Callable[[], None] | None = None

    def handle(self, _signum: int, _frame: FrameType | None) -> None:
        if not self.cancelled:
            say("\nCanceling the migration...")
        self.cancelled = True
        if self.on_cancel is not None:
            self.on_cancel()

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled

    def ssh(self, remote: Sequence[str]) -> list[str]:
        r = self.request
        return ["ssh", *r.ssh_opts, f"{r.user}@{r.server}", "--", shlex.join(remote)]

    def on_target(self, remote: Sequence[str], *, input: bytes | None = None, check: bool = True) -> str:
        return run(self.ssh(remote), input=input, check=check)


def cmd_migrate(args: list[str]) -> int:
    request = parse_migrate(args)
    job = Job(request)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, job.handle)
    ve = find(request.ve)
    if ve is None:
        raise Failure(f"The {request.ve} virtual machine does not exist.")
    say(f"Migrate the {ve.word} {ve.name} on {request.server} {request.dst_id} ({request.location})")
    try:
        if ve.kind == "CT" and not request.tunnel:
            raise Failure("tunnelless container migration is not supported")
        if ve.state in ("running", "paused"):
            if ve.kind == "CT":
                raise Failure("live container migration needs CRIU, which this stand-in cannot run")
            if request.clone:
                raise Failure("the stand-in clones stopped VMs only (libvirt moves a running VM, it cannot copy it)")
            migrate_live(job, ve)
        elif ve.state == "stopped":
            migrate_offline(job, ve)
        else:
            raise Failure(f"the stand-in migrates running, paused and stopped VEs; this one is {ve.state}")
    except Cancelled:
        raise Failure(f"\nFailed to migrate the {ve.word}: Operation was cancelled by the user.") from None
    except Failure as exc:
        raise Failure(f"\nFailed to migrate the {ve.word}: {exc.message}", exc.status) from None
    progress(100)
    say(f"\nThe {ve.word} has been successfully migrated.")
    return 0


def _target_dir(job: Job, ve_uuid: str, default: str) -> str:
    return f"{job.request.location.rstrip('/')}/{ve_uuid}" if job.request.location else default


def _refuse_existing(job: Job, ve: VE, new_uuid: str) -> None:
    uri = LXC if ve.kind == "CT" else QEMU
    for key in {ve.name, new_uuid}:
        if "UUID:" in job.on_target(["virsh", "-q", "-c", uri, "dominfo", key], check=False):
            raise Failure(f"a VE named or with UUID {key} already exists on {job.request.server}")


def migrate_live(job: Job, ve: VE) -> None:
    r = job.request
    _refuse_existing(job, ve, ve.uuid)
    argv = ["virsh", "-c", QEMU, "migrate", "--live", "--p2p", "--persistent", "--undefinesource", "--verbose"]
    made: list[str] = []
    xml_file: Path | None = None
    if ve.disks:
        argv.append("--copy-storage-all")
        if r.tunnel:
            argv.append("--tls")  # libvirt cannot tunnel a disk copy; QEMU's migration TLS encrypts both
        # libvirt creates missing target disks only inside a storage pool: every disk is made here
        # first, at the source's path or in <--dst>/<VE_UUID>/, and QEMU then fills it.
        xml = parse_xml(ET.tostring(ve.xml))
        directory = _target_dir(job, ve.uuid, "")
        for disk in xml.findall("./devices/disk[@device='disk']/source[@file]"):
            src = str(disk.get("file"))
            dst = f"{directory}/{PurePosixPath(src).name}" if directory else src
            if job.on_target(["sh", "-c", 'test -e "$1" && echo yes', "sh", dst], check=False).strip():
                raise Failure(f"{dst} already exists on {r.server}")
            size = json.loads(run(["qemu-img", "info", "-U", "--output=json", src]))["virtual-size"]
            fmt = next((f for p, f in ve.disks if p == src), "raw")
            job.on_target(["mkdir", "-p", "--", str(PurePosixPath(dst).parent)])
            job.on_target(["qemu-img", "create", "-q", "-f", fmt, dst, str(size)])
            made.append(dst)
            disk.set("file", dst)
        if directory:
            # Beside the disks on this host: the destination XML virsh sends along.
            xml_file = Path(VM_HOME) / f".vemigrate-standin-{ve.uuid}.xml"
            xml_file.write_text(ET.tostring(xml, encoding="unicode"))
            argv += ["--xml", str(xml_file), "--persistent-xml", str(xml_file)]
    elif r.tunnel:
        argv.append("--tunnelled")
    if r.compression:
        argv.append("--compressed")
    argv += [ve.uuid, f"qemu+ssh://{r.user}@{r.server}/system"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def abort() -> None:
        subprocess.run(["virsh", "-c", QEMU, "domjobabort", ve.uuid], capture_output=True, check=False)

    job.on_cancel = abort
    job.check()
    assert proc.stderr is not None
    said = b""
    shown = -1
    while True:
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            break
        said += chunk
        for value in re.findall(rb"Migration: \[\s*(\d+)\s*%\]", chunk):
            # libvirt restarts its percentage for memory after the disks; prlctl's only goes up.
            percent = min(int(value), 99)
            if percent > shown:
                progress(percent)
                shown = percent
    rc = proc.wait()
    job.on_cancel = None
    if xml_file is not None:
        xml_file.unlink(missing_ok=True)
    if rc != 0:
        for dst in made:
            job.on_target(["rm", "-f", "--", dst], check=False)
        job.check()
        message = said.decode(errors="replace").replace("\r", "\n").strip().splitlines()
        raise Failure(message[-1] if message else f"virsh migrate exited {rc}")
    for path, _ in ve.disks:  # the VM is removed from the source: its definition went with --undefinesource
        Path(path).unlink(missing_ok=True)


def migrate_offline(job: Job, ve: VE) -> None:
    r = job.request
    new_uuid = str(uuidlib.uuid4()) if r.clone else ve.uuid
    _refuse_existing(job, ve, new_uuid)
    default = str(PurePosixPath(ve.private).parent / new_uuid) if ve.kind == "CT" and ve.private else VM_HOME
    directory = _target_dir(job, new_uuid, default)
    if ve.kind == "CT":
        job.on_target(["mkdir", "-p", "--", str(PurePosixPath(directory).parent)])
        job.on_target(["mkdir", "--", directory])  # fails when it exists: whatever is inside is this job's
    else:
        job.on_target(["mkdir", "-p", "--", directory])
    made: list[str] = [directory] if ve.kind == "CT" or r.location else []
    try:
        xml = parse_xml(ET.tostring(ve.xml))
        if ve.kind == "CT":
            _copy_private(job, ve, directory)
            for fs in xml.findall("./devices/filesystem/source[@dir]"):
                if fs.get("dir") == ve.private:
                    fs.set("dir", directory)
        else:
            total = sum(Path(p).stat().st_size for p, _ in ve.disks) or 1
            done = 0
            for disk in xml.findall("./devices/disk[@device='disk']/source[@file]"):
                src = str(disk.get("file"))
                dst = f"{directory}/{PurePosixPath(src).name}"
                if job.on_target(["sh", "-c", 'test -e "$1" && echo yes', "sh", dst], check=False).strip():
                    raise Failure(f"{dst} already exists on {r.server}")
                made.append(dst)
                done = _copy_file(job, src, dst, done, total)
                disk.set("file", dst)
        if r.clone:
            uuid_el = xml.find("uuid")
            if uuid_el is not None:
                uuid_el.text = new_uuid
            for iface in xml.findall("./devices/interface"):
                mac = iface.find("mac")
                if mac is not None:
                    iface.remove(mac)
        job.check()
        uri = LXC if ve.kind == "CT" else QEMU
        job.on_target(["virsh", "-q", "-c", uri, "define", "/dev/stdin"], input=ET.tostring(xml))
    except (Cancelled, Failure):
        for path in reversed(made):
            job.on_target(["rm", "-rf", "--", path], check=False)
        raise
    if r.clone:
        return
    if ve.kind == "VM":
        remove_ve(ve)
        return
    # The seed: the original container's private area and configuration file get the .migrated suffix.
    config = f"{LXC_CONFIG}/{ve.name}.xml"
    Path(f"{config}.migrated").write_text(ET.tostring(ve.xml, encoding="unicode"))
    virsh(ve.uri, "undefine", ve.uuid)
    if ve.private:
        Path(ve.private).rename(f"{ve.private}.migrated")


def _copy_file(job: Job, src: str, dst: str, done: int, total: int) -> int:
    """One file to the target (zstd on the wire unless --no-compression), sha256 compared, then renamed."""
    part = f"{dst}.part"
    unpack = 'zstd -q -d -c >"$1"' if job.request.compression else 'cat >"$1"'
    receiver = subprocess.Popen(job.ssh(["sh", "-c", unpack, "sh", part]), stdin=subprocess.PIPE)
    sink = receiver
    packer: subprocess.Popen[bytes] | None = None
    if job.request.compression:
        packer = subprocess.Popen(["zstd", "-q", "-c", "-T0"], stdin=subprocess.PIPE, stdout=receiver.stdin)
        sink = packer
    assert sink.stdin is not None
    digest = hashlib.sha256()
    shown = -1
    with Path(src).open("rb") as f:
        while chunk := f.read(CHUNK):
            if job.cancelled:
                break
            digest.update(chunk)
            sink.stdin.write(chunk)
            done += len(chunk)
            percent = min(done * 100 // total, 99)
            if percent != shown:
                progress(percent)
                shown = percent
    sink.stdin.close()
    if packer is not None:
        packer.wait()
        assert receiver.stdin is not None
        receiver.stdin.close()
    rc = receiver.wait()
    job.check()
    if rc != 0:
        raise Failure(f"copying {src} to {job.request.server} failed (exit {rc})")
    remote = job.on_target(["sha256sum", part]).split()[0]
    if remote != digest.hexdigest():
        raise Failure(f"checksum mismatch for {src} on {job.request.server}")
    job.on_target(["mv", "--", part, dst])
    return done


def _copy_private(job: Job, ve: VE, directory: str) -> None:
    """A container's private area, as one tar stream, into the (new, empty) directory on the target."""
    assert ve.private is not None
    total = int(run(["du", "-sb", ve.private]).split()[0]) or 1
    unpack = 'zstd -q -d -c | tar -C "$1" -xpf -' if job.request.compression else 'tar -C "$1" -xpf -'
    receiver = subprocess.Popen(job.ssh(["sh", "-c", unpack, "sh", directory]), stdin=subprocess.PIPE)
    packer = subprocess.Popen(["tar", "-C", ve.private, "-cpf", "-", "."], stdout=subprocess.PIPE)
    squeeze = (
        subprocess.Popen(["zstd", "-q", "-c"], stdin=subprocess.PIPE, stdout=receiver.stdin)
        if job.request.compression
        else receiver
    )
    assert packer.stdout is not None and squeeze.stdin is not None
    done, shown = 0, -1
    while chunk := packer.stdout.read(CHUNK):
        if job.cancelled:
            packer.kill()
            break
        squeeze.stdin.write(chunk)
        done += len(chunk)
        percent = min(done * 100 // total, 99)
        if percent != shown:
            progress(percent)
            shown = percent
    squeeze.stdin.close()
    packer.wait()
    if squeeze is not receiver:
        squeeze.wait()
        assert receiver.stdin is not None
        receiver.stdin.close()
    rc = receiver.wait()
    job.check()
    if rc != 0:
        raise Failure(f"copying the private area to {job.request.server} failed (exit {rc})")


# -- prlsrvctl ----------------------------------------------------------------------------------
def cmd_info(args: list[str]) -> int:
    caps = parse_xml(virsh(QEMU, "capabilities")) if _connected(QEMU) else None
    if caps is None:
        raise Failure("Unable to connect to the dispatcher (libvirtd does not answer)", EXIT_NO_DISPATCHER)
    data: dict[str, object] = {
        "ID": caps.findtext("./host/uuid", ""),
        "Hostname": socket.gethostname(),
        "Version": VERSION,
        "VM home": VM_HOME,
        "Minimal security level": "low",
        "Traffic shaping": "off",
    }
    if "--full" in args or "-f" in args:
        data["CPU model"] = caps.findtext("./host/cpu/model", "")
        data["CPU features"] = " ".join(f.get("name", "") for f in caps.findall("./host/cpu/feature")) + " "
    data["Verbose log"] = "off"
    if "-j" in args or "--json" in args:
        say(json.dumps(data, indent=1))
    else:
        for key, value in data.items():
            say(f"{key}: {value}")
    return 0


def cmd_net(args: list[str]) -> int:
    if not args or args[0] != "list":
        raise Failure("the stand-in knows `prlsrvctl net list` only", EXIT_USAGE)
    bridges = sorted(p.name for p in Path("/sys/class/net").iterdir() if (p / "bridge").is_dir())
    nets = [{"Network ID": b, "Type": "bridged", "Bound To": b} for b in bridges]
    if "-j" in args or "--json" in args:
        say(json.dumps(nets, indent=1))
    else:
        say(f"{'Network ID':<17} {'Type':<9} {'Bound To':<14}")
        for n in nets:
            say(f"{n['Network ID']:<17} {n['Type']:<9} {n['Bound To']:<14}")
    return 0


PRLCTL: dict[str, Callable[[list[str]], int]] = {
    "list": cmd_list,
    "snapshot-list": cmd_snapshot_list,
    "migrate": cmd_migrate,
    "stop": cmd_stop,
    "delete": cmd_delete,
    "exec": cmd_exec,
    "set": cmd_set,
}
PRLSRVCTL: dict[str, Callable[[list[str]], int]] = {"info": cmd_info, "net": cmd_net}


def main(argv: list[str]) -> int:
    tool = PurePosixPath(argv[0]).name if argv else ""
    commands = {"prlctl": PRLCTL, "prlsrvctl": PRLSRVCTL}.get(tool)
    if commands is None or len(argv) < 2:
        sys.stderr.write("usage: prlctl_standin.py prlctl|prlsrvctl COMMAND [ARGS...]\n")
        return EXIT_USAGE
    command = commands.get(argv[1])
    if command is None:
        sys.stderr.write(f"{tool} (vemigrate stand-in): the command {argv[1]!r} is not part of this stand-in\n")
        return EXIT_USAGE
    try:
        return command(argv[2:])
    except Failure as exc:
        sys.stdout.flush()
        sys.stderr.write(exc.message + "\n")  # prlctl's own failure lines start with a newline too
        sys.stderr.flush()
        return exc.status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
