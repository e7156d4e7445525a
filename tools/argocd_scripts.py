"""Copy deploy/argocd/vemigrate.io/<Kind>/health.lua into the two places users take it from:
deploy/argocd/argocd-cm.yaml and docs/gitops.md (tests/unit/test_argocd_health.py checks they match).

    python tools/argocd_scripts.py
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("VirtualEnvironmentMigration", "HypervisorHost")


def _block_after(text: str, key: str) -> tuple[int, int]:
    """Start and end of the 4-space-indented block that follows `key` in `text`."""
    start = text.index(key) + len(key)
    end = start
    for line in text[start:].splitlines(True):
        if not (line.startswith("    ") or not line.strip()):
            break
        end += len(line)
    return start, end


def main() -> None:
    configmap = ROOT / "deploy" / "argocd" / "argocd-cm.yaml"
    docs = ROOT / "docs" / "gitops.md"
    cm_text, doc_text = configmap.read_text(), docs.read_text()
    for kind in KINDS:
        script = (ROOT / "deploy" / "argocd" / "vemigrate.io" / kind / "health.lua").read_text()
        block = "".join(f"    {line}" if line.strip() else line for line in script.splitlines(True))
        start, end = _block_after(cm_text, f"  resource.customizations.health.vemigrate.io_{kind}: |\n")
        old = cm_text[start:end]
        cm_text = cm_text[:start] + block + cm_text[end:]
        if old not in doc_text:
            raise SystemExit(f"docs/gitops.md does not carry argocd-cm.yaml's {kind} script: copy it by hand once")
        doc_text = doc_text.replace(old, block)
    configmap.write_text(cm_text)
    docs.write_text(doc_text)


if __name__ == "__main__":
    main()
