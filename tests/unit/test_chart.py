"""The Helm chart, rendered and linted offline by Helm's own Go SDK: lint clean (strict too), the CRDs are
the repository's, the Deployment is locked down, the arguments are ones `vemigrate run` accepts, and the
RBAC is exactly what the operator uses, Secrets readable only where the values say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.fixtures.chart import CHART, PEERING_CRDS, RULES_FILE, crd_files, every, notes, one, operator_args, render
from vemigrate.api import crd
from vemigrate.cli import build_parser

ROOT = CHART.parents[1]
KOPF_PEERING_CRDS = {"kopf.dev_clusterkopfpeerings.yaml", "kopf.dev_kopfpeerings.yaml"}


def rules(role: dict[str, Any]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    """A role's rules as (apiGroup, resource, verb, resourceNames) tuples: order and grouping do not matter."""
    return {
        (group, resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def expand(group: str, resources: list[str], verbs: list[str], names: tuple[str, ...] = ()) -> set[Any]:
    return {(group, r, v, names) for r in resources for v in verbs}


# What the operator does (operator/vemigrate/kube/*.py, handlers.py, and kopf under them).
KINDS = (
    expand("vemigrate.io", ["virtualenvironmentmigrations"], ["list", "watch", "patch"])
    | expand("vemigrate.io", ["hypervisorhosts"], ["get", "list", "watch", "patch"])
    | expand("vemigrate.io", ["virtualenvironmentmigrations/status", "hypervisorhosts/status"], ["patch"])
    | expand("", ["events"], ["create"])
)
CRDS = expand("apiextensions.k8s.io", ["customresourcedefinitions"], ["list", "watch"])


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
@pytest.mark.parametrize(
    "values",
    [{}, {"replicaCount": 2, "watchNamespaces": ["a", "b"], "serviceMonitor": {"enabled": True}}],
    ids=["defaults", "peering-namespaced-monitored"],
)
def test_helm_lint_is_clean(strict: bool, values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=strict)
    assert report["errors"] == []
    # Severity 1 is information ("icon is recommended"); warnings (2) and errors (3) are findings.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    assert report["total_charts_linted"] == 1


def test_the_charts_crds_are_the_repositorys_own() -> None:
    chart = crd_files()
    repo = {path.name: path.read_text() for path in sorted((ROOT / "crds").glob("*.yaml"))}
    assert repo, "crds/ is empty"
    for name, text in repo.items():
        assert chart.get(name) == text, f"charts/ve-migrate/crds/{name} differs from crds/{name}: run `make lint`"
    assert set(chart) == set(repo), "the chart's crds/ holds the repository's CRDs and nothing else"
    assert set(crd_files(PEERING_CRDS)) == KOPF_PEERING_CRDS, "kopf's, in the kopf-peering subchart"
    assert crd.stale(CHART / "crds") == []


def test_the_kopf_peering_crds_are_what_kopf_looks_for() -> None:
    scopes = {}
    for name in KOPF_PEERING_CRDS:
        spec = yaml.safe_load(crd_files(PEERING_CRDS)[name])["spec"]
        assert spec["group"] == "kopf.dev" and spec["versions"][0]["name"] == "v1"
        scopes[spec["names"]["kind"]] = spec["scope"]
    assert scopes == {"ClusterKopfPeering": "Cluster", "KopfPeering": "Namespaced"}


def test_the_peering_crds_subchart_is_turned_off_by_its_value() -> None:
    with helm.Chart.load(CHART) as chart:
        dependency = next(d for d in chart.metadata["dependencies"] if d["name"] == "kopf-peering")
        assert dependency["condition"] == "peering.installCRDs"
        assert chart.values["peering"]["installCRDs"] is True


def test_defaults_make_a_locked_down_deployment() -> None:
    objects = render()
    assert sorted(o["kind"] for o in objects) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    deployment = one(objects, "Deployment", "vem-ve-migrate", "ops")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}, "never two standalone operators"
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"])
    # The only writable place is /tmp, and the operator's temporary files go there.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["TMPDIR"] == "/tmp" and env["HOME"] == "/tmp"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "health": 8080}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe


def test_the_deployments_arguments_are_what_vemigrate_run_accepts() -> None:
    args = build_parser().parse_args(operator_args(render()))
    assert args.command == "run"
    assert args.metrics_port == 9090 and args.metrics_address == "0.0.0.0"
    # The probes ask kopf's health endpoint, which these arguments put on the probed port and path.
    assert args.liveness == "http://0.0.0.0:8080/healthz"
    assert args.namespace is None, "all namespaces"
    assert args.peering is None, "one replica runs standalone"
    assert (args.max_parallel, args.host_probe_seconds, args.log_level) == (0, 60.0, "INFO")

    tuned = {"operator": {"maxParallel": 3, "hostProbeSeconds": 15, "logLevel": "DEBUG"}, "health": {"port": 8181}}
    args = build_parser().parse_args(operator_args(render(tuned)))
    assert (args.max_parallel, args.host_probe_seconds, args.log_level) == (3, 15.0, "DEBUG")
    assert args.liveness == "http://0.0.0.0:8181/healthz"


def test_cluster_wide_rbac_is_exactly_what_the_operator_uses() -> None:
    objects = render()
    assert rules(one(objects, "ClusterRole", "ops-vem-ve-migrate")) == CRDS | KINDS
    # Secrets: get, in the release namespace only (the default), by a Role, never a ClusterRole.
    secrets = one(objects, "Role", "vem-ve-migrate-secrets", "ops")
    assert rules(secrets) == {("", "secrets", "get", ())}
    binding = one(objects, "RoleBinding", "vem-ve-migrate-secrets", "ops")
    assert binding["roleRef"]["name"] == "vem-ve-migrate-secrets"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "vem-ve-migrate", "namespace": "ops"}]
    cluster_binding = one(objects, "ClusterRoleBinding")
    assert cluster_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "ops-vem-ve-migrate",
    }
    for role in every(objects, "ClusterRole") + every(objects, "Role"):
        for group, resource, verb, _ in rules(role):
            assert "*" not in (group, resource, verb), role["metadata"]["name"]
            assert verb not in {"create", "update", "delete", "deletecollection"} or resource == "events"


def test_secrets_only_where_and_as_named() -> None:
    values = {"rbac": {"secretNamespaces": ["hosts-a", "hosts-b"], "secretNames": ["node-a-ssh", "fleet-known-hosts"]}}
    objects = render(values)
    for namespace in ("hosts-a", "hosts-b"):
        role = one(objects, "Role", "vem-ve-migrate-secrets", namespace)
        assert rules(role) == {("", "secrets", "get", ("node-a-ssh", "fleet-known-hosts"))}
        one(objects, "RoleBinding", "vem-ve-migrate-secrets", namespace)
    assert every(objects, "Role", namespace="ops") == [], "not the operator's own namespace, unless listed"
    assert "named node-a-ssh, fleet-known-hosts only" in notes(values)


def test_namespaced_mode_grants_the_kinds_per_namespace_only() -> None:
    objects = render({"watchNamespaces": ["team-a", "team-b"]})
    args = build_parser().parse_args(operator_args(objects))
    assert args.namespace == ["team-a", "team-b"]
    assert rules(one(objects, "ClusterRole")) == CRDS | expand("", ["namespaces"], ["list", "watch"])
    for namespace in ("team-a", "team-b"):
        assert rules(one(objects, "Role", "vem-ve-migrate", namespace)) == KINDS
        binding = one(objects, "RoleBinding", "vem-ve-migrate", namespace)
        assert binding["subjects"][0]["namespace"] == "ops", "the ServiceAccount lives in the release namespace"
        # Secrets default to the watched namespaces, where the hosts are.
        assert rules(one(objects, "Role", "vem-ve-migrate-secrets", namespace)) == {("", "secrets", "get", ())}


def test_more_than_one_replica_turns_on_kopf_peering() -> None:
    objects = render({"replicaCount": 2})
    args = build_parser().parse_args(operator_args(objects))
    assert args.peering == "vem-ve-migrate"
    assert one(objects, "ClusterKopfPeering", "vem-ve-migrate")["apiVersion"] == "kopf.dev/v1"
    assert one(objects, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    assert rules(one(objects, "ClusterRole")) == (
        CRDS
        | KINDS
        | expand("kopf.dev", ["clusterkopfpeerings"], ["list", "watch"])
        | expand("kopf.dev", ["clusterkopfpeerings"], ["patch"], ("vem-ve-migrate",))
    )
    assert every(render(), "ClusterKopfPeering") == [] and "--peering" not in " ".join(operator_args(render()))
    # Each replica announces itself in the peering object under its Pod's name (kopf reads POD_ID).
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    pod_id = {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert pod_id in container["env"]


def test_namespaced_peering_meets_in_each_namespace() -> None:
    objects = render({"replicaCount": 2, "watchNamespaces": ["team-a", "team-b"], "peering": {"name": "fleet"}})
    assert build_parser().parse_args(operator_args(objects)).peering == "fleet"
    assert every(objects, "ClusterKopfPeering") == []
    for namespace in ("team-a", "team-b"):
        one(objects, "KopfPeering", "fleet", namespace)
        assert {
            ("kopf.dev", "kopfpeerings", "list", ()),
            ("kopf.dev", "kopfpeerings", "watch", ()),
            ("kopf.dev", "kopfpeerings", "patch", ("fleet",)),
        } <= rules(one(objects, "Role", "vem-ve-migrate", namespace))


def test_metrics_service_and_optional_service_monitor() -> None:
    objects = render()
    service = one(objects, "Service", "vem-ve-migrate-metrics")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert every(objects, "ServiceMonitor") == [] and every(objects, "PrometheusRule") == []

    monitor = one(render({"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}), "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # The host's namespace on vemigrate_host_reachable survives the scrape (not exported_namespace).
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


RUNBOOKS = "https://wiki.example.org/ve-migrate/runbooks"


def test_prometheus_rule_carries_the_rules_file_with_runbooks_users_can_open() -> None:
    values = {
        "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
        "alerts": {"runbookBaseURL": RUNBOOKS},
    }
    rule = one(render(values), "PrometheusRule")
    source = yaml.safe_load(RULES_FILE.read_text())
    assert rule["metadata"]["labels"]["release"] == "prom"
    rendered = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    original = [r for group in source["groups"] for r in group["rules"]]
    assert len(rendered) == len(original) > 0
    for got, want in zip(rendered, original, strict=True):
        # The same rule, label templates untouched; only the repository path became a URL, and that URL
        # names a runbook that exists in docs/runbooks.
        url = got["annotations"].pop("runbook_url")
        path = want["annotations"].pop("runbook_url")
        assert got == want
        assert url == f"{RUNBOOKS}/{Path(path).name}" and (ROOT / path).is_file(), url


def test_prometheus_rule_without_a_runbook_url_is_refused_with_what_to_set() -> None:
    with pytest.raises(helm.HelmError, match=r"alerts\.runbookBaseURL"):
        render({"prometheusRule": {"enabled": True}})


def test_values_users_expect_reach_the_deployment() -> None:
    digest = "sha256:" + "ab" * 32
    spread = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}]
    objects = render(
        {
            "image": {"repository": "registry.local/ve-migrate", "tag": "ignored", "digest": digest},
            "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.local:3128"}],
            "revisionHistoryLimit": 3,
            "topologySpreadConstraints": spread,
            "replicaCount": 2,
        }
    )
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == f"registry.local/ve-migrate@{digest}"
    assert {"name": "HTTPS_PROXY", "value": "http://proxy.local:3128"} in container["env"]
    assert {"name": "HOME", "value": "/tmp"} in container["env"], "the chart's own stay"
    assert deployment["spec"]["revisionHistoryLimit"] == 3
    assert pod["topologySpreadConstraints"] == spread
    assert every(objects, "PodDisruptionBudget") == []


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        ({}, {"maxUnavailable": 1}),
        ({"minAvailable": 1}, {"minAvailable": 1}),
        ({"maxUnavailable": "50%"}, {"maxUnavailable": "50%"}),
    ],
)
def test_a_disruption_budget_for_the_operators_pods(budget: dict[str, Any], expected: dict[str, Any]) -> None:
    objects = render({"podDisruptionBudget": {"enabled": True, **budget}})
    pdb = one(objects, "PodDisruptionBudget", "vem-ve-migrate", "ops")
    assert pdb["apiVersion"] == "policy/v1"
    selector = pdb["spec"].pop("selector")["matchLabels"]
    assert pdb["spec"] == expected
    assert selector.items() <= one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": "two"},
        {"replicaCount": -1},
        {"watchNamespaces": ["Not_A_Namespace"]},
        {"rbac": {"secretNames": ["UPPER"]}},
        {"operator": {"logLevel": "LOUD"}},
        {"image": {"repository": ""}},
        {"imag": {"repository": "typo"}},
        {"health": {"port": 70000}},
        {"image": {"repository": "x", "digest": "latest"}},
        {"alerts": {"runbookBaseURL": "docs/runbooks"}},
        {"podDisruptionBudget": {"enabled": True, "maxUnavailable": "half"}},
        {"extraEnv": [{"value": "no name"}]},
        {"revisionHistoryLimit": -1},
    ],
)
def test_the_values_schema_refuses_bad_values(values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError):
        chart.validate_schema(values)


def test_notes_say_what_was_installed() -> None:
    text = notes({"replicaCount": 2})
    assert "all namespaces" in text and 'kopf peering "vem-ve-migrate"' in text
    assert "kubectl -n ops rollout status deployment/vem-ve-migrate" in text


def test_crds_check_covers_the_charts_copy(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from vemigrate.cli import main

    repo, copy = tmp_path / "crds", tmp_path / "chart-crds"
    assert main(["crds", "--output", str(repo), "--also", str(copy)]) == 0
    assert main(["crds", "--output", str(repo), "--check", "--also", str(copy)]) == 0
    edited = copy / "vemigrate.io_hypervisorhosts.yaml"
    edited.write_text(edited.read_text().replace("libvirt", "libvirtd", 1))
    assert main(["crds", "--output", str(repo), "--check", "--also", str(copy)]) == 1
    assert "libvirtd" in capsys.readouterr().out
    assert main(["crds", "--output", str(repo), "--check"]) == 0, "without --also the copy is not looked at"
