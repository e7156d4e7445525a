"""The local cluster's node (`vemigrate controlplane up --node`): kube-controller-manager,
kube-scheduler, a private containerd (runc, CNI bridge) and a kubelet registered as a node.

Everything lives in `<control plane state dir>/node/`: containerd's root, state and socket, runc's
state, the CNI configuration and its IP allocations, the kubelet's root, Pod logs. Nothing is written
to the system's containerd, /etc/cni or /var/lib/kubelet. What cannot live there (the bridge device,
the cgroups runc makes, the kubelet's symlinks in /var/log/containers) is named in the state file
before it exists, and `stop` removes only that.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from vemigrate_dev import controlplane_pki as pki
from vemigrate_dev.controlplane_binaries import Binaries, Log

NODE_NAME = "vemigrate-node"
PAUSE_IMAGE = "vemigrate.local/pause:1"
KUBERNETES_SERVICE_IP = "10.0.0.1"  # the first address of the apiserver's --service-cluster-ip-range
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
_POD_NETWORK = ipaddress.IPv4Network("10.88.0.0/16")  # one /24 of it per node
_READY_TIMEOUT = 120.0
_STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class NodeState:
    """What `start` made, written before it is made, so `stop` finds and removes exactly that."""

    name: str
    bridge: str
    pod_subnet: str
    binaries: str
    cgroup_root: str
    apiserver_port: int
    containerd_pid: int = 0
    controller_manager_pid: int = 0
    scheduler_pid: int = 0
    kubelet_pid: int = 0
    started: str = ""


@dataclass(frozen=True)
class NodeInfo:
    name: str
    directory: Path
    containerd_socket: Path
    pod_subnet: str
    bridge: str

    def ctr(self, *args: str) -> list[str]:
        """argv of `ctr` against this node's containerd, in the kubelet's namespace."""
        return ["ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", *args]

    def import_image(self, archive: Path, name: str) -> None:
        """Import an OCI archive under `name`, the name a Pod's `image:` resolves to (a bare
        `ve-migrate:0.1.0` is `docker.io/library/ve-migrate:0.1.0` to the kubelet)."""
        _run(self.ctr("image", "import", "--index-name", name, str(archive)))


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _alive(pid: int, binary: str) -> bool:
    """True if `pid` runs `binary` and is not a zombie (a recycled PID is never taken for ours)."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap our own child if it exited
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    line = _cmdline(pid)
    return bool(line) and line[0] == binary.encode()


def _stop_pid(pid: int, binary: str, name: str, log: Log) -> None:
    if not _alive(pid, binary):
        return
    log(f"stopping {name} (pid {pid})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT
    while _alive(pid, binary):
        if time.monotonic() > deadline:
            log(f"{name} (pid {pid}) ignored SIGTERM for {_STOP_TIMEOUT:.0f}s; killing it")
            os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.1)


def _used_networks() -> list[ipaddress.IPv4Network]:
    routes = json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]))
    used = []
    for route in routes:
        with contextlib.suppress(ValueError):
            if route.get("dst", "default") != "default":
                used.append(ipaddress.ip_network(route["dst"], strict=False))
    return [network for network in used if isinstance(network, ipaddress.IPv4Network)]


def _free_subnet() -> tuple[int, ipaddress.IPv4Network]:
    """A /24 of 10.88.0.0/16 no route on this machine covers (another node, a lab, a VPN)."""
    used = _used_networks()
    subnets: list[ipaddress.IPv4Network] = list(_POD_NETWORK.subnets(new_prefix=24))
    for index, subnet in enumerate(subnets):
        if index == 0:
            continue  # 10.88.0.0/24 is Podman's and containerd's default CNI network
        # A node's bridge exists before its first Pod gives it the subnet's route.
        if not any(subnet.overlaps(network) for network in used) and not Path(f"/sys/class/net/vmgpod{index}").exists():
            return index, subnet
    raise RuntimeError(f"every /24 of {_POD_NETWORK} is routed on this machine; no Pod subnet is free")


def _pause_archive(binary: Path, into: Path) -> Path:
    """An OCI archive of one layer holding our `pause` (the node has no registry to pull one from)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tar.gettarinfo(str(binary), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        with binary.open("rb") as handle:
            tar.addfile(info, handle)
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    layer_bytes = layer.getvalue()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(json.dumps(config).encode())},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer_bytes)}],
    }
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(json.dumps(manifest).encode())}
        ],
    }
    archive = into / "pause.oci.tar"
    with tarfile.open(archive, mode="w") as tar:

        def add(name: str, data: bytes) -> None:
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index).encode())
        for digest, data in blobs.items():
            add("blobs/sha256/" + digest.removeprefix("sha256:"), data)
    return archive


class Node:
    """The node of the control plane whose state directory is `plane_dir`."""

    def __init__(self, plane_dir: Path, log: Log) -> None:
        self.directory = plane_dir / "node"
        self.plane_dir = plane_dir
        self.log = log
        # What this object started: their exit is seen by poll(), not by /proc (which names the
        # Python binary between fork and exec).
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def _state_file(self) -> Path:
        return self.directory / "state.json"

    @property
    def socket(self) -> Path:
        return self.directory / "containerd" / "containerd.sock"

    @property
    def pod_logs(self) -> Path:
        return self.directory / "pod-logs"

    def read_state(self) -> NodeState | None:
        try:
            return NodeState(**json.loads(self._state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _write_state(self, state: NodeState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps(asdict(state), indent=2) + "\n")

    def _processes(self, state: NodeState) -> list[tuple[str, int, str]]:
        directory = Path(state.binaries)
        containerd = _containerd()
        return [
            ("kubelet", state.kubelet_pid, str(directory / "kubelet")),
            ("kube-scheduler", state.scheduler_pid, str(directory / "kube-scheduler")),
            ("kube-controller-manager", state.controller_manager_pid, str(directory / "kube-controller-manager")),
            ("containerd", state.containerd_pid, containerd),
        ]

    def status(self) -> NodeInfo | None:
        state = self.read_state()
        if state is None or not all(_alive(pid, binary) for _, pid, binary in self._processes(state)):
            return None
        return self._info(state)

    def _info(self, state: NodeState) -> NodeInfo:
        return NodeInfo(state.name, self.directory, self.socket, state.pod_subnet, state.bridge)

    # Starting.

    def start(self, binaries: Binaries, server: str, keys: pki.Pki, kubeconfig: Path, kubectl: Path) -> NodeInfo:
        for tool in ("containerd", "ctr", "runc"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed; the node needs Debian's containerd and runc")
        if not (CNI_BIN_DIR / "bridge").exists():
            raise RuntimeError(f"no CNI plugins in {CNI_BIN_DIR}; install Debian's containernetworking-plugins")
        started = time.monotonic()
        index, subnet = _free_subnet()
        state = NodeState(
            name=NODE_NAME,
            bridge=f"vmgpod{index}",
            cgroup_root=f"/vemigrate-node-{index}",
            apiserver_port=int(server.rsplit(":", 1)[1]),
            pod_subnet=str(subnet),
            binaries=str(binaries.directory),
            started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        self._write_state(state)  # before the bridge or any process exists: `stop` always finds them
        logs = self.plane_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)

        def spawn(name: str, argv: list[str]) -> int:
            with (logs / f"{name}.log").open("wb") as out:
                process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            self._children[name] = process
            return process.pid

        def record(**pids: int) -> None:
            nonlocal state
            state = NodeState(**{**asdict(state), **pids})
            self._write_state(state)

        containerd_config = self._write_containerd_config(state)
        self._write_cni_config(state)
        self._make_bridge(state)
        self.log(f"starting containerd (socket {self.socket}), Pod subnet {subnet} on bridge {state.bridge}")
        record(containerd_pid=spawn("containerd", [_containerd(), "--config", str(containerd_config)]))
        self._wait(lambda: self.socket.exists(), "containerd's socket", "containerd")
        with tempfile.TemporaryDirectory() as scratch:
            self._info(state).import_image(_pause_archive(binaries.directory / "pause", Path(scratch)), PAUSE_IMAGE)

        directory = binaries.directory
        self.log("starting kube-controller-manager and kube-scheduler")
        record(
            controller_manager_pid=spawn(
                "kube-controller-manager",
                [
                    str(directory / "kube-controller-manager"),
                    f"--kubeconfig={kubeconfig}",
                    "--bind-address=127.0.0.1",
                    "--secure-port=0",
                    "--leader-elect=false",
                    f"--root-ca-file={keys.ca_cert}",
                    f"--service-account-private-key-file={keys.service_account_key}",
                    "--use-service-account-credentials=false",
                    # A Pod's status is seconds old on a local node; fail over quickly when a test stops it.
                    "--node-monitor-grace-period=20s",
                ],
            ),
            scheduler_pid=spawn(
                "kube-scheduler",
                [
                    str(directory / "kube-scheduler"),
                    f"--kubeconfig={kubeconfig}",
                    "--bind-address=127.0.0.1",
                    "--secure-port=0",
                    "--leader-elect=false",
                ],
            ),
        )
        _make_cgroup(state.cgroup_root)
        kubelet_config = self._write_kubelet_config(keys, state.cgroup_root)
        self.log(f"starting kubelet {binaries.version} as node {state.name}")
        record(
            kubelet_pid=spawn(
                "kubelet",
                [
                    str(directory / "kubelet"),
                    f"--config={kubelet_config}",
                    f"--kubeconfig={kubeconfig}",
                    f"--root-dir={self.directory / 'kubelet'}",
                    f"--cert-dir={self.directory / 'kubelet' / 'pki'}",
                    f"--hostname-override={state.name}",
                ],
            )
        )
        self._wait(lambda: self._node_ready(kubectl, kubeconfig, state.name), f"node {state.name} Ready", "kubelet")
        self.log(f"node {state.name} Ready in {time.monotonic() - started:.1f}s")
        return self._info(state)

    def _wait(self, done: Callable[[], bool], what: str, log_name: str) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while not done():
            dead = [name for name, child in self._children.items() if child.poll() is not None]
            if dead or time.monotonic() > deadline:
                reason = f"{', '.join(dead)} exited" if dead else f"not there within {_READY_TIMEOUT:.0f}s"
                tail = self._log_tail(dead[0] if dead else log_name)
                raise RuntimeError(f"waiting for {what}: {reason}; its log ends:\n{tail}")
            time.sleep(0.5)

    def _log_tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join(
                (self.plane_dir / "logs" / f"{name}.log").read_text(errors="replace").splitlines()[-lines:]
            )
        except OSError:
            return "(no log)"

    @staticmethod
    def _node_ready(kubectl: Path, kubeconfig: Path, name: str) -> bool:
        result = subprocess.run(
            [str(kubectl), f"--kubeconfig={kubeconfig}", "get", "node", name, "-o",
             "jsonpath={.status.conditions[?(@.type=='Ready')].status}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return result.returncode == 0 and result.stdout.strip() == "True"

    def _write_containerd_config(self, state: NodeState) -> Path:
        base = self.directory / "containerd"
        base.mkdir(parents=True, exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        text = f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  # The pause container's oom_score_adj is -998; here (a VM's container, say) lowering it below our
  # own is refused, and runc fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  # The Pods' network namespaces are mounted under our state, not /run/netns.
  netns_mounts_under_state_dir = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{base / "runc"}"
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self.directory / "cni" / "net.d"}"
"""
        path = base / "config.toml"
        path.write_text(text)
        return path

    def _write_cni_config(self, state: NodeState) -> None:
        subnet = ipaddress.ip_network(state.pod_subnet)
        conf = {
            "cniVersion": "1.0.0",
            "name": "vemigrate",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": state.bridge,
                    # The bridge is the Pods' gateway, and their traffic leaves masqueraded as the
                    # machine: the lab's host subnet (and anything else the machine routes to) is reachable.
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(subnet), "gateway": str(next(subnet.hosts()))}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.directory / "cni" / "ipam"),
                    },
                },
            ],
        }
        directory = self.directory / "cni" / "net.d"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "10-vemigrate.conflist").write_text(json.dumps(conf, indent=2) + "\n")

    def _write_kubelet_config(self, keys: pki.Pki, cgroup_root: str) -> Path:
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This machine's cgroups are the v1 hierarchy; kubelet >= 1.35 refuses it unless told.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",  # no systemd runs the node
            # Pods go under a cgroup of this node's own (kubepods/<QoS>/pod<uid>/<container>), made
            # and removed by us: nothing under /sys/fs/cgroup outlives `down`, nor mixes with another node's.
            "cgroupRoot": cgroup_root,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "port": _free_port(),
            "healthzPort": 0,
            "readOnlyPort": 0,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(keys.ca_cert)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "podLogsDir": str(self.pod_logs),
            "volumePluginDir": str(self.directory / "kubelet-plugins"),
            # Imported images are the only copies: never garbage-collect them, never evict for disk.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
        }
        path = self.directory / "kubelet.yaml"
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        return path

    # Stopping.

    def stop(self, binaries_dir: Path | None = None) -> bool:
        """Stop the node and remove what it made. True if anything was running."""
        state = self.read_state()
        if state is None:
            if self.directory.exists():
                self._unmount_all()
                shutil.rmtree(self.directory, ignore_errors=True)
            return False
        running = any(_alive(pid, binary) for _, pid, binary in self._processes(state))
        processes = dict((name, (pid, binary)) for name, pid, binary in self._processes(state))
        # The kubelet first, or it would start the Pods again; then containerd tears each Pod down
        # itself (containers, CNI DEL: veth, address, NAT rules; the network namespace's mount).
        _stop_pid(*processes["kubelet"], "kubelet", self.log)
        if _alive(*processes["containerd"]):
            sweep = subprocess.run(
                [str(Path(state.binaries) / "cri-sweep"), str(self.socket)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if sweep.returncode != 0:
                self.log(f"cri-sweep failed: {sweep.stderr.strip()}")
        for name in ("kube-scheduler", "kube-controller-manager", "containerd"):
            _stop_pid(*processes[name], name, self.log)
        self._stop_shims()
        self._unmount_all()
        _remove_cgroup(state.cgroup_root, self.log)
        rule = self._apiserver_rule(state)
        if subprocess.run(["iptables", "-t", "nat", "-C", *rule], capture_output=True, check=False).returncode == 0:
            _run(["iptables", "-t", "nat", "-D", *rule])
        self._remove_bridge(state.bridge)
        self._remove_log_links()
        shutil.rmtree(self.directory, ignore_errors=True)
        return running

    def _stop_shims(self) -> None:
        """containerd-shim processes started by our containerd (they name its socket) outlive it."""
        marker = str(self.socket).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            line = _cmdline(int(entry.name))
            if line and line[0].endswith(b"containerd-shim-runc-v2") and marker in line:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)

    def _unmount_all(self) -> None:
        """Unmount everything under our directory (the kubelet's rshared root, Pod volumes, rootfs,
        shm and netns mounts), deepest first."""
        prefix = str(self.directory.resolve()) + "/"
        for _ in range(5):
            mounts = []
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].replace("\\040", " ")
                if (point + "/").startswith(prefix):
                    mounts.append(point)
            if not mounts:
                return
            for point in sorted(set(mounts), key=len, reverse=True):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        self.log(f"mounts under {self.directory} remain after unmounting five times")

    def _apiserver_rule(self, state: NodeState) -> list[str]:
        """PREROUTING rule: the `kubernetes` Service's address, from the Pods' bridge, to the apiserver
        on loopback (the job kube-proxy would do for this one Service; no kube-proxy runs)."""
        return [
            "PREROUTING",
            "-i", state.bridge,
            "-d", f"{KUBERNETES_SERVICE_IP}/32",
            "-p", "tcp",
            "--dport", "443",
            "-m", "comment",
            "--comment", f"vemigrate node {self.directory}",
            "-j", "DNAT",
            "--to-destination", f"127.0.0.1:{state.apiserver_port}",
        ]  # fmt: skip

    def _make_bridge(self, state: NodeState) -> None:
        """The Pods' bridge, made before CNI would (it takes an existing bridge of its name), so the route
        to the apiserver is in place before the first Pod: loopback as a destination allowed on this
        bridge only (`route_localnet`), and the DNAT rule."""
        _run(["ip", "link", "add", "name", state.bridge, "type", "bridge"])
        _run(["ip", "link", "set", state.bridge, "up"])
        Path(f"/proc/sys/net/ipv4/conf/{state.bridge}/route_localnet").write_text("1\n")
        _run(["iptables", "-t", "nat", "-A", *self._apiserver_rule(state)])

    def _remove_bridge(self, name: str) -> None:
        link = subprocess.run(["ip", "-j", "-d", "link", "show", name], capture_output=True, text=True, check=False)
        if link.returncode != 0:
            return
        kind = json.loads(link.stdout)[0].get("linkinfo", {}).get("info_kind")
        if kind != "bridge":
            self.log(f"{name} is a {kind}, not the bridge this node made; left alone")
            return
        _run(["ip", "link", "delete", name])

    def _remove_log_links(self) -> None:
        """The kubelet links each container's log from /var/log/containers; only links into our Pod
        logs are ours."""
        system = Path("/var/log/containers")
        if not system.is_dir():
            return
        ours = str(self.pod_logs) + "/"
        for link in system.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and str(link.readlink()).startswith(ours):
                    link.unlink()


def _cgroup_hierarchies() -> list[Path]:
    """Every cgroup hierarchy's mount point: v1 (cpu, memory, ..., name=systemd) and, on a hybrid
    machine, the unified v2 one, where runc makes each container's cgroup too."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        after = fields[fields.index("-") + 1 :]
        if after[0] in ("cgroup", "cgroup2"):
            points.append(Path(fields[4]))
    return points


def _make_cgroup(root: str) -> None:
    for hierarchy in _cgroup_hierarchies():
        directory = hierarchy / root.lstrip("/")
        directory.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):  # a new cpuset is empty: no CPU, no memory node
            if (directory / name).exists() and (hierarchy / name).exists():
                (directory / name).write_text((hierarchy / name).read_text())


def _remove_cgroup(root: str, log: Log, timeout: float = 10.0) -> None:
    """rmdir the node's cgroup tree, deepest first. rmdir refuses (EBUSY) a cgroup that still holds a
    process, and the processes just signalled may take a moment to be gone: try again until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left: list[tuple[Path, OSError]] = []
        for hierarchy in _cgroup_hierarchies():
            top = hierarchy / root.lstrip("/")
            if not top.is_dir():
                continue
            tree = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for directory in [*tree, top]:
                try:
                    directory.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    left.append((directory, exc))
        if not left:
            return
        if time.monotonic() >= deadline:
            for directory, error in left:
                log(f"cgroup {directory} left: {error}")
            return
        time.sleep(0.2)


def _containerd() -> str:
    return shutil.which("containerd") or "/usr/bin/containerd"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
