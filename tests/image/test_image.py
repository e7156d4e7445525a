"""The operator's image, built by `make image` (tools/image.sh) from Debian's packages and PyPI, imported
without a registry (its OCI archive unpacked by umoci) and run by runc the way the chart's Deployment
runs it: as the image's user 65532, a read-only root, HOME=/tmp on a tmpfs, no network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
UID = 65532


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if found and os.geteuid() == 0:
        return found
    reason = f"{tool} is not installed (tools/debian-packages.txt)" if not found else "building the image needs root"
    if os.environ.get("CI") == "true":
        pytest.fail(f"the image tier must run in CI, but {reason}")
    pytest.skip(reason)


class Image:
    """An unpacked OCI image: a runtime bundle whose config.json umoci made from the image's config."""

    def __init__(self, archive: Path, work: Path) -> None:
        self.layout = work / "layout"
        with tarfile.open(archive) as tar:
            tar.extractall(self.layout, filter="tar")
        index = json.loads((self.layout / "index.json").read_text())
        (self.manifest,) = index["manifests"]
        self.tag = self.manifest["annotations"]["org.opencontainers.image.ref.name"]
        self.bundle = work / "bundle"
        subprocess.run(
            [_need("umoci"), "unpack", "--image", f"{self.layout}:{self.tag}", str(self.bundle)],
            check=True,
            capture_output=True,
        )
        self.spec: dict[str, Any] = json.loads((self.bundle / "config.json").read_text())
        self.state = work / "runc"
        blob = self.layout / "blobs" / "sha256"
        manifest = json.loads((blob / self.manifest["digest"].removeprefix("sha256:")).read_text())
        self.config: dict[str, Any] = json.loads(
            (blob / manifest["config"]["digest"].removeprefix("sha256:")).read_text()
        )

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """`command` in a container as the chart's Pod has it: the image's user, environment and working
        directory, a read-only root, a writable /tmp (the Pod's emptyDir), HOME=/tmp."""
        spec = json.loads(json.dumps(self.spec))
        spec["process"]["args"] = list(command)
        spec["process"]["terminal"] = False
        spec["root"]["readonly"] = True
        spec["mounts"].append(
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
        )
        (self.bundle / "config.json").write_text(json.dumps(spec))
        return subprocess.run(
            [
                _need("runc"),
                "--root",
                str(self.state),
                "run",
                "--bundle",
                str(self.bundle),
                f"vemigrate-image-{uuid.uuid4().hex[:8]}",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    for tool in ("mmdebstrap", "umoci", "runc"):
        _need(tool)
    out = tmp_path_factory.mktemp("image-out")
    # The .debs are kept where `make image` keeps them: a rebuild downloads nothing from Debian again.
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vemigrate" / "image"
    env = {**os.environ, "VENV": sys.prefix, "VEMIGRATE_IMAGE_DIR": str(out)}
    cache.joinpath("debs").mkdir(parents=True, exist_ok=True)
    out.joinpath("debs").symlink_to(cache / "debs")
    built = subprocess.run([REPO / "tools" / "image.sh"], env=env, capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    (archive,) = out.glob("ve-migrate-*.oci.tar")
    assert f"image: {archive}" in built.stdout
    return Image(archive, tmp_path_factory.mktemp("image-run"))


def test_config_is_what_the_chart_runs(image: Image) -> None:
    config = image.config["config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["vemigrate"]
    assert config["Cmd"] == ["run"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HOME"] == "/tmp"
    assert env["PATH"].split(":")[0] == "/opt/ve-migrate/bin"
    labels = config["Labels"]
    assert image.tag == f"ve-migrate:{labels['org.opencontainers.image.version']}"
    assert labels["org.opencontainers.image.title"] == "ve-migrate"
    assert len(image.config["rootfs"]["diff_ids"]) == 1
    # umoci turned the image's user into the runtime's: the container never starts as root.
    assert (image.spec["process"]["user"]["uid"], image.spec["process"]["user"]["gid"]) == (UID, UID)


def test_vemigrate_help_in_the_container(image: Image) -> None:
    # The chart's `command: [vemigrate]` is found on the image's PATH.
    top = image.run("vemigrate", "--help")
    assert top.returncode == 0, top.stderr
    assert "run the operator" in top.stdout
    run = image.run("vemigrate", "run", "--help")
    assert run.returncode == 0, run.stderr
    for option in ("--metrics-port", "--liveness", "--peering", "--namespace"):
        assert option in run.stdout


def test_runtime_as_the_pod_has_it(image: Image) -> None:
    probe = (
        "import json, os, libvirt, kopf, asyncssh, vemigrate.handlers, vemigrate.drivers.libvirt\n"
        "try:\n"
        "    open('/written', 'w')\n"
        "    root = 'writable'\n"
        "except OSError as exc:\n"
        "    root = exc.strerror\n"
        "open('/tmp/scratch', 'w').write('x')\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'home': os.path.expanduser('~'),\n"
        "                  'libvirt': libvirt.getVersion(), 'root': root}))\n"
    )
    result = image.run("python3", "-c", probe)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["uid"] == UID and seen["gid"] == UID
    assert seen["home"] == "/tmp"
    assert seen["root"] == "Read-only file system"
    assert seen["libvirt"] >= 9_000_000  # libvirt0 of Debian 12 (9.0) answers through libvirt-python
    # OpenSSH's client needs the user in /etc/passwd (it refuses "No user exists for uid").
    ssh = image.run("ssh", "-G", "-p", "22", "node-a.example")
    assert ssh.returncode == 0, ssh.stderr
    assert "user nonroot" in ssh.stdout


def test_no_compiler_and_no_dev_tooling(image: Image) -> None:
    tools = ["gcc", "cc", "c++", "make", "pip", "pip3", "go", "helm", "qemu-system-x86_64", "libvirtd", "virsh"]
    missing = image.run("sh", "-c", " ".join(f"command -v {t} || echo absent {t};" for t in tools))
    assert missing.returncode == 0, missing.stderr
    assert missing.stdout.split("\n")[:-1] == [f"absent {t}" for t in tools]
    modules = ["pip", "setuptools", "pytest", "mypy", "ruff", "hypothesis", "lupa", "helm", "vemigrate_dev"]
    check = "import importlib.util as u; print([m for m in " + repr(modules) + " if u.find_spec(m)])"
    found = image.run("python3", "-c", check)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"


def test_no_local_environment(image: Image) -> None:
    # The dev environment (operator/vemigrate_dev) is not in the image: no file of it, no module.
    found = image.run(
        "sh", "-c", "find /opt/ve-migrate -name 'vemigrate_dev*' -o -name devenv -o -name prlctl_standin.py"
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout == ""
    records = image.run("sh", "-c", "cat /opt/ve-migrate/lib/python3*/site-packages/ve_migrate-*.dist-info/RECORD")
    assert records.returncode == 0, records.stderr
    top = {line.split("/", 1)[0] for line in records.stdout.splitlines()}
    assert {name for name in top if not name.endswith(".dist-info") and not name.startswith("..")} == {"vemigrate"}


def test_dev_verbs_are_absent_from_the_image(image: Image) -> None:
    top = image.run("vemigrate", "--help")
    assert top.returncode == 0, top.stderr
    for verb in ("controlplane", "lab", "demo", "argocd"):
        assert f"\n    {verb}" not in top.stdout, top.stdout
    lab = image.run("vemigrate", "lab", "up")
    assert lab.returncode == 2
    assert lab.stderr.strip().splitlines() == [
        "vemigrate lab: the dev environment is not installed (it is not part of the operator's image): "
        "in a checkout of ve-migrate: tools/setup.sh, or pip install -e '.[dev]'"
    ]
