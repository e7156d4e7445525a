"""The Containerfile (Docker, Podman) and `make image` (tools/image.sh, proven by tests/image) build the
same image: nothing here can build the Containerfile, so what it sets is compared with the script."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = (REPO / "Containerfile").read_text()
SCRIPT = (REPO / "tools" / "image.sh").read_text()


def _final_stage() -> str:
    return CONTAINERFILE.split("\nFROM ")[-1]


def _script_value(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)$", SCRIPT, re.MULTILINE)
    assert match, name
    return match.group(1)


def test_same_debian_packages() -> None:
    (installed,) = re.findall(r"apt-get install -y --no-install-recommends ([^\\\n&]+)", _final_stage())
    (included,) = re.findall(r"--include=(\S+)", SCRIPT)
    assert sorted(installed.split()) == sorted(included.split(","))
    assert "FROM debian:bookworm" in CONTAINERFILE and " bookworm " in SCRIPT


def test_same_user_entrypoint_and_environment() -> None:
    final = _final_stage()
    uid = _script_value("uid")
    assert f"USER {uid}:{uid}" in final
    assert '--config.user "$uid:$uid"' in SCRIPT
    assert f"nonroot:x:{uid}:{uid}:ve-migrate:/tmp:/usr/sbin/nologin" in final
    assert "nonroot:x:$uid:$uid:ve-migrate:/tmp:/usr/sbin/nologin" in SCRIPT
    assert 'ENTRYPOINT ["vemigrate"]' in final and "--config.entrypoint vemigrate" in SCRIPT
    assert 'CMD ["run"]' in final and "--config.cmd run" in SCRIPT
    venv = _script_value("venv_in_image")
    assert f"COPY --from=build {venv} {venv}" in final
    env = dict(re.findall(r"^\s*(?:ENV )?([A-Z_]+)=(\S+?)(?: \\)?$", final, re.MULTILINE))
    script_env = dict(item.split("=", 1) for item in re.findall(r'--config\.env "?([A-Z_]+=[^"\s]+)"?', SCRIPT))
    script_env["PATH"] = script_env["PATH"].replace("$venv_in_image", venv)
    assert env == script_env
    assert env["HOME"] == "/tmp" and env["PATH"].startswith(f"{venv}/bin:")


def test_version_label_is_the_project_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert f"org.opencontainers.image.version={version}" in _final_stage()
    assert '--config.label "org.opencontainers.image.version=$version"' in SCRIPT


def test_both_install_the_libvirt_extra_and_never_the_local_environment() -> None:
    copies = re.findall(r"^COPY (?!--from)(.+)$", CONTAINERFILE, re.MULTILINE)
    assert copies == ["pyproject.toml README.md /src/", "operator/vemigrate /src/operator/vemigrate"]
    assert '"/src[libvirt]"' in CONTAINERFILE
    assert 'cp -a "$here/operator/vemigrate" "$work/src/operator/"' in SCRIPT
    assert '"$work/src[libvirt]"' in SCRIPT and "'$name[libvirt]==$version'" in SCRIPT
    assert "vemigrate_dev" not in CONTAINERFILE.replace("(operator/vemigrate_dev)", "")


def test_the_distribution_ships_the_operator_only() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["vemigrate", "vemigrate.*"]
    runtime = {re.split(r"[<>=\[ ]", dep)[0].lower() for dep in project["project"]["dependencies"]}
    # libvirt-python is the libvirt extra; cryptography is the dev environment's (asyncssh brings its own).
    assert not runtime & {"libvirt-python", "cryptography", "pytest"}
    extras = project["project"]["optional-dependencies"]
    assert extras["libvirt"] == ["libvirt-python>=9.0"]
    assert any(dep.startswith("cryptography") for dep in extras["dev"])
