"""ServiceAccounts on the local control plane, with exactly the RBAC a user would grant, and
kubeconfigs that authenticate as them with a TokenRequest token. Lets tests and the demo run the
operator under its real permissions instead of as cluster-admin."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

from vemigrate_dev import controlplane_kubeconfig as kubeconfig
from vemigrate_dev.controlplane import ControlPlaneInfo


def api_client(kubeconfig_path: Path) -> client.ApiClient:
    """A kubernetes.client.ApiClient authenticated by a kubeconfig file."""
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig_path)
    )
    return api


@dataclass(frozen=True)
class Rule:
    """One RBAC policy rule."""

    api_groups: Sequence[str]
    resources: Sequence[str]
    verbs: Sequence[str]


def grant(
    admin: client.ApiClient, namespace: str, name: str, rules: Sequence[Rule], *, cluster_wide: bool = False
) -> None:
    """Create ServiceAccount `name` in `namespace` and bind it to a Role (or ClusterRole) of `rules`."""
    core = client.CoreV1Api(admin)
    rbac = client.RbacAuthorizationV1Api(admin)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
    subjects = [client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)]
    policy = [
        client.V1PolicyRule(api_groups=list(r.api_groups), resources=list(r.resources), verbs=list(r.verbs))
        for r in rules
    ]
    if cluster_wide:
        # Cluster-scoped names must not collide between namespaces that reuse the account's name.
        role_name = f"{namespace}-{name}"
        meta = client.V1ObjectMeta(name=role_name)
        rbac.create_cluster_role(client.V1ClusterRole(metadata=meta, rules=policy))
        ref = client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role_name)
        rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(metadata=meta, role_ref=ref, subjects=subjects))
    else:
        meta = client.V1ObjectMeta(name=name)
        rbac.create_namespaced_role(namespace, client.V1Role(metadata=meta, rules=policy))
        ref = client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=name)
        rbac.create_namespaced_role_binding(
            namespace, client.V1RoleBinding(metadata=meta, role_ref=ref, subjects=subjects)
        )


def mint_kubeconfig(
    info: ControlPlaneInfo,
    admin: client.ApiClient,
    namespace: str,
    name: str,
    path: Path,
    seconds: int = 3600,
) -> Path:
    """Write a kubeconfig authenticating as ServiceAccount `namespace/name` (a TokenRequest token)."""
    # No audiences: the token is for the apiserver's own (the service-account issuer).
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
    )
    answer = client.CoreV1Api(admin).create_namespaced_service_account_token(name, namespace, request)
    if answer.status is None or not answer.status.token:
        raise RuntimeError(f"the apiserver issued no token for ServiceAccount {namespace}/{name}")
    return kubeconfig.write(path, info.server, info.ca_cert, kubeconfig.token_user(answer.status.token), namespace)
