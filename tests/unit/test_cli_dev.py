"""The local environment's verbs (`vemigrate controlplane | lab | demo`) come from `vemigrate_dev`, a
package outside the operator's distribution: found where it is installed, imported only when one of
them is typed (or for `--help`), and where it is missing (the image) `--help` leaves them out and typing
one says so in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import vemigrate_dev.commands
from vemigrate import cli

REPO = Path(__file__).resolve().parents[2]
OPERATOR = REPO / "operator"

# Run a `vemigrate` command in a fresh interpreter; `hide` makes these modules unimportable (as in an
# installation without them), and the last stdout line lists the vemigrate_dev modules that were loaded.
_SCRIPT = """
import json, sys
hide, argv = json.loads(sys.argv[1]), sys.argv[2:]
for name in hide:
    sys.modules[name] = None
from vemigrate.cli import main
try:
    code = main(argv)
except SystemExit as exc:
    code = exc.code
print(json.dumps(sorted(m for m in sys.modules if m.startswith("vemigrate_dev") and sys.modules[m])))
sys.exit(code)
"""


def _vemigrate(*argv: str, hide: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    import json

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(OPERATOR), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(list(hide)), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    *output, loaded = result.stdout.splitlines()
    return subprocess.CompletedProcess(result.args, result.returncode, "\n".join(output), result.stderr), json.loads(
        loaded
    )


def test_dev_verbs_listed_and_working_where_installed() -> None:
    top, _ = _vemigrate("--help")
    assert top.returncode == 0, top.stderr
    for verb in ("run", "crds", *cli.DEV_COMMANDS):
        assert f"\n    {verb}" in top.stdout, top.stdout
    lab, loaded = _vemigrate("lab", "--help")
    assert lab.returncode == 0, lab.stderr
    assert "up" in lab.stdout and "down" in lab.stdout
    assert "vemigrate_dev.commands" in loaded
    for verb, word in (("controlplane", "up"), ("demo", "--tunnel")):
        shown, _ = _vemigrate(verb, "--help")
        assert shown.returncode == 0, shown.stderr
        assert word in shown.stdout


def test_the_operators_commands_never_load_the_dev_environment(tmp_path: Path) -> None:
    run, loaded = _vemigrate("run", "--help")
    assert run.returncode == 0, run.stderr
    assert loaded == []
    crds, loaded = _vemigrate("crds", "--output", str(tmp_path))
    assert crds.returncode == 0, crds.stderr
    assert loaded == []


def test_without_the_dev_environment_help_leaves_its_verbs_out() -> None:
    top, loaded = _vemigrate("--help", hide=("vemigrate_dev",))
    assert top.returncode == 0, top.stderr
    assert loaded == []
    assert "run the operator" in top.stdout
    for verb in cli.DEV_COMMANDS:
        assert f"\n    {verb}" not in top.stdout, top.stdout


def test_without_the_dev_environment_a_dev_verb_is_one_line_and_exit_2() -> None:
    for verb in cli.DEV_COMMANDS:
        result, _ = _vemigrate(verb, "up", hide=("vemigrate_dev",))
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.strip() == (
            f"vemigrate {verb}: the dev environment is not installed (it is not part of the operator's image): "
            "in a checkout of ve-migrate: tools/setup.sh, or pip install -e '.[dev]'"
        )


def test_a_missing_dependency_of_the_dev_environment_is_named() -> None:
    result, _ = _vemigrate("controlplane", "status", hide=("cryptography",))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(
        "vemigrate controlplane: the dev environment needs the Python module 'cryptography', which is not installed"
    ), result.stderr


def test_the_cli_and_the_dev_package_agree_on_the_verbs() -> None:
    assert vemigrate_dev.commands.NAMES == cli.DEV_COMMANDS


def test_only_the_cli_names_the_dev_package() -> None:
    # import-linter sees imports, not names handed to importlib: no other operator module may name it.
    naming = sorted(
        str(path.relative_to(OPERATOR))
        for path in (OPERATOR / "vemigrate").rglob("*.py")
        if "vemigrate_dev" in path.read_text()
    )
    assert naming == ["vemigrate/cli.py"]
