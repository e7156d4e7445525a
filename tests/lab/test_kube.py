"""The lab publishes its hosts to a real apiserver: the CRD's validation accepts them, and the
Secrets hold the key and known_hosts the hosts really use."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from kubernetes import client

from vemigrate.api.common import GROUP, VERSION
from vemigrate.api.host import PLURAL
from vemigrate_dev.lab import LabInfo, kube


def test_lab_hosts_are_applied_as_hypervisor_hosts(
    lab: LabInfo, control_plane: Any, kube_admin: Any, namespace: str
) -> None:
    applied = kube.apply(lab, namespace, str(control_plane.kubeconfig))
    assert applied[:2] == [f"Secret/{kube.KEY_SECRET}", f"Secret/{kube.KNOWN_HOSTS_SECRET}"]
    hosts = client.CustomObjectsApi(kube_admin).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    by_name = {o["metadata"]["name"]: o["spec"] for o in hosts["items"]}
    assert set(by_name) == {h.name for h in lab.hosts}
    for h in lab.hosts:
        assert by_name[h.name]["address"] == h.address
        assert by_name[h.name]["libvirtURI"] == f"qemu+ssh://root@{h.address}/system"
    known = client.CoreV1Api(kube_admin).read_namespaced_secret(kube.KNOWN_HOSTS_SECRET, namespace)
    assert base64.b64decode(known.data["known_hosts"]).decode() == Path(lab.known_hosts).read_text()
    # Applying again (a second `lab up`) replaces rather than fails.
    assert kube.apply(lab, namespace, str(control_plane.kubeconfig)) == applied
