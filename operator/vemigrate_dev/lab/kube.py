"""The lab hosts as the operator sees them: one HypervisorHost per host plus two Secrets (the lab's
SSH private key, and known_hosts with every host's key), applied through a kubeconfig or written as
a manifest file."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, cast

import yaml

from vemigrate.api.common import GROUP, VERSION, SecretKeyRef
from vemigrate.api.host import (
    KNOWN_HOSTS_KEY,
    PLURAL,
    PRIVATE_KEY_KEY,
    SECRET_MARK_LABEL,
    SECRET_MARK_VALUE,
    Driver,
    HostSpec,
    HypervisorHost,
)
from vemigrate_dev.lab.environment import LabInfo

KEY_SECRET = "vemigrate-lab-ssh-key"  # noqa: S105 - a Secret's name, not a password
KNOWN_HOSTS_SECRET = "vemigrate-lab-known-hosts"  # noqa: S105 - a Secret's name
LABELS = {"app.kubernetes.io/part-of": "vemigrate-lab"}
# With prlctl=True every lab host is published a second time, as "<host>-vz" with driver prlctl: the
# same machine, driven through the prlctl/prlsrvctl STAND-IN installed on it (prlctl_standin.py).
PRLCTL_SUFFIX = "-vz"
# With containers=True every lab host is also published as "<host>-ct": the same machine's libvirtd
# through its LXC driver (lxc+ssh://), which runs the lab's containers.
CONTAINER_SUFFIX = "-ct"


def prlctl_name(host: str) -> str:
    return f"{host}{PRLCTL_SUFFIX}"


def objects(info: LabInfo, namespace: str, *, prlctl: bool = False, containers: bool = False) -> list[dict[str, Any]]:
    """Secrets first, then the hosts: the order they must be created in."""
    meta = {"namespace": namespace, "labels": dict(LABELS)}
    # The Secrets carry the mark that lets HypervisorHosts use them (api/host.py).
    secret_meta = {"namespace": namespace, "labels": {**LABELS, SECRET_MARK_LABEL: SECRET_MARK_VALUE}}
    out: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/ssh-auth",
            "metadata": {"name": KEY_SECRET, **secret_meta},
            "data": {PRIVATE_KEY_KEY: _b64(info.ssh_key.read_bytes())},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": KNOWN_HOSTS_SECRET, **secret_meta},
            "data": {KNOWN_HOSTS_KEY: _b64(info.known_hosts.read_bytes())},
        },
    ]
    for h in info.hosts:
        spec = HostSpec(
            address=h.address,
            port=22,
            user="root",
            driver=Driver.LIBVIRT,
            credentials_secret_ref=SecretKeyRef(name=KEY_SECRET, key=PRIVATE_KEY_KEY),
            known_hosts_secret_ref=SecretKeyRef(name=KNOWN_HOSTS_SECRET, key=KNOWN_HOSTS_KEY),
            libvirt_uri=h.ssh_uri,
            migration_address=h.address,
        )
        out.append(HypervisorHost(metadata={"name": h.name, **meta}, spec=spec).to_wire())
    for h in info.hosts if prlctl else []:
        spec = HostSpec(
            address=h.address,
            driver=Driver.PRLCTL,
            credentials_secret_ref=SecretKeyRef(name=KEY_SECRET, key=PRIVATE_KEY_KEY),
            known_hosts_secret_ref=SecretKeyRef(name=KNOWN_HOSTS_SECRET, key=KNOWN_HOSTS_KEY),
        )
        out.append(HypervisorHost(metadata={"name": prlctl_name(h.name), **meta}, spec=spec).to_wire())
    for h in info.hosts if containers else []:
        spec = HostSpec(
            address=h.address,
            driver=Driver.LIBVIRT,
            credentials_secret_ref=SecretKeyRef(name=KEY_SECRET, key=PRIVATE_KEY_KEY),
            known_hosts_secret_ref=SecretKeyRef(name=KNOWN_HOSTS_SECRET, key=KNOWN_HOSTS_KEY),
            libvirt_uri=f"lxc+ssh://root@{h.address}/system",
        )
        out.append(HypervisorHost(metadata={"name": h.name + CONTAINER_SUFFIX, **meta}, spec=spec).to_wire())
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_manifests(
    info: LabInfo, namespace: str, path: Path, *, prlctl: bool = False, containers: bool = False
) -> None:
    path.write_text(yaml.safe_dump_all(objects(info, namespace, prlctl=prlctl, containers=containers), sort_keys=False))
    path.chmod(0o600)  # it holds the lab's private key


def apply(
    info: LabInfo, namespace: str, kubeconfig: str, *, prlctl: bool = False, containers: bool = False
) -> list[str]:
    """Create or replace the Secrets and HypervisorHosts; returns what was applied, as kind/name."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    try:
        api_client = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except Exception as exc:  # missing or unreadable kubeconfig
        raise RuntimeError(f"cannot use kubeconfig {kubeconfig}: {exc}") from exc
    api_client.configuration.retries = 1  # fail in seconds when the cluster is down, not after minutes
    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    done = []
    try:
        for obj in objects(info, namespace, prlctl=prlctl, containers=containers):
            name = obj["metadata"]["name"]
            if obj["kind"] == "Secret":
                try:
                    core.create_namespaced_secret(namespace, cast(Any, obj))
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    core.replace_namespaced_secret(name, namespace, cast(Any, obj))
            else:
                try:
                    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj)
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    custom.patch_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, name, {"spec": obj["spec"]}
                    )
            done.append(f"{obj['kind']}/{name}")
    except ApiException as exc:
        raise RuntimeError(
            f"could not apply the lab's hosts to the cluster ({exc.status} {exc.reason}); "
            "is the control plane up and the HypervisorHost CRD installed?"
        ) from exc
    except Exception as exc:  # urllib3 and OS errors alike: the cluster is not reachable
        raise RuntimeError(f"could not reach the cluster in {kubeconfig}: {exc}") from exc
    finally:
        api_client.close()
    return done


def delete(namespace: str, kubeconfig: str, names: list[str]) -> None:
    """Remove what `apply` created (missing objects are fine)."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    api_client = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    try:
        custom = client.CustomObjectsApi(api_client)
        core = client.CoreV1Api(api_client)
        for name in names:
            try:
                custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        for secret in (KEY_SECRET, KNOWN_HOSTS_SECRET):
            try:
                core.delete_namespaced_secret(secret, namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
    finally:
        api_client.close()
