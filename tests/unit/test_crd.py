"""The generated CRDs: in sync with the models, structural, fully described, with the CEL rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from vemigrate.api import crd
from vemigrate.cli import main

ROOT = Path(__file__).resolve().parents[2]
VEM = "vemigrate.io_virtualenvironmentmigrations.yaml"
HVH = "vemigrate.io_hypervisorhosts.yaml"
# Kubernetes declares these itself; every CRD leaves them bare.
BARE = {"apiVersion", "kind", "metadata"}


def schema(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "crds" / name).read_text())
    return loaded["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for key, child in node.get("properties", {}).items():
        if key not in BARE or path:
            found += walk(child, f"{path}.{key}")
    if "items" in node:
        found += walk(node["items"], f"{path}[]")
    return found


def test_committed_crds_are_what_the_models_generate() -> None:
    assert crd.stale(ROOT / "crds") == []


def test_check_mode_reports_staleness(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds", "--output", str(tmp_path), "--check"]) == 1
    assert main(["crds", "--output", str(tmp_path)]) == 0
    assert main(["crds", "--output", str(tmp_path), "--check"]) == 0
    (tmp_path / VEM).write_text((tmp_path / VEM).read_text().replace("Auto", "Automatic", 1))
    assert main(["crds", "--output", str(tmp_path), "--check"]) == 1
    assert "Automatic" in capsys.readouterr().out


@pytest.mark.parametrize("name", [VEM, HVH])
def test_schema_is_structural_and_described(name: str) -> None:
    for path, node in walk(schema(name)):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert "type" in node, f"{path} has no type"
        is_list_item = path.endswith("[]")
        if path and not is_list_item and path.lstrip(".") not in BARE:
            assert node.get("description"), f"{path} has no description"


def test_migration_spec_rules_and_defaults() -> None:
    spec = schema(VEM)["properties"]["spec"]
    rules = {r["rule"] for r in spec["x-kubernetes-validations"]}
    assert "self.source.host != self.target.host" in rules
    assert "!self.changeSid || self.clone" in rules
    immutable = [r for r in spec["x-kubernetes-validations"] if "oldSelf" in r["rule"] and "immutable" in r["message"]]
    fields = {r["fieldPath"].lstrip(".") for r in immutable}
    assert fields == set(spec["properties"]) - {"action"}, "every field but action is immutable"
    props = spec["properties"]
    assert props["action"]["enum"] == ["Cancel", "ForceComplete"]
    assert props["mode"]["enum"] == ["Auto", "Live", "Offline"]
    assert (props["mode"]["default"], props["tunnel"]["default"], props["compression"]["default"]) == (
        "Auto",
        True,
        True,
    )
    assert props["timeouts"]["default"] == {} and props["retry"]["default"] == {}
    target_rules = {r["rule"] for r in props["target"]["x-kubernetes-validations"]}
    assert "!has(self.path) || self.path.startsWith('/')" in target_rules


def test_printer_columns_and_names() -> None:
    loaded = yaml.safe_load((ROOT / "crds" / VEM).read_text())
    version = loaded["spec"]["versions"][0]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    for wanted in ["Phase", "Source", "Target", "Mode", "Progress", "Age"]:
        assert wanted in columns
    assert version["subresources"] == {"status": {}}
    assert loaded["spec"]["names"]["shortNames"] == ["vem", "vems"]
    hosts = yaml.safe_load((ROOT / "crds" / HVH).read_text())
    host_columns = [c["name"] for c in hosts["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert host_columns[:4] == ["Address", "Driver", "Reachable", "Age"]
    assert hosts["spec"]["names"]["shortNames"] == ["hvh"]
