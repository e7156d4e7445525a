"""The CRDs' schemas and CEL rules, enforced by the real kube-apiserver: bad input is refused with a
message a person can act on, defaults are filled in, unknown fields are pruned, and status is only
written through the status subresource."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.cluster.objects import GROUP, HOSTS, MIGRATIONS, VERSION, host, migration, rejection


def _create(custom: Any, namespace: str, body: dict[str, Any], plural: str = MIGRATIONS, **kw: Any) -> Any:
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body, **kw)


def _get(custom: Any, namespace: str, name: str, plural: str = MIGRATIONS) -> Any:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)


def _refused(call: Any, *args: Any, **kw: Any) -> tuple[int, str]:
    with pytest.raises(ApiException) as caught:
        call(*args, **kw)
    return rejection(caught.value)


def _update_spec(custom: Any, namespace: str, name: str, **changes: Any) -> Any:
    """Read-modify-write of the whole object (a PUT): what `kubectl edit` and `apply` amount to."""
    current = _get(custom, namespace, name)
    for key, value in changes.items():
        if value is None:
            current["spec"].pop(key, None)
        else:
            current["spec"][key] = value
    return custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, name, current)


def test_a_valid_migration_is_stored_with_its_defaults(custom: Any, namespace: str) -> None:
    _create(custom, namespace, migration("m"))
    spec = _get(custom, namespace, "m")["spec"]
    assert spec["mode"] == "Auto"
    assert spec["tunnel"] is True
    assert spec["compression"] is True
    assert spec["clone"] is False
    assert spec["changeSid"] is False
    assert spec["retry"] == {"maxAttempts": 1, "backoffSeconds": 30}
    assert "action" not in spec


def test_change_sid_without_clone_is_refused(custom: Any, namespace: str) -> None:
    status, message = _refused(_create, custom, namespace, migration("m", changeSid=True))
    assert status == 422
    assert "spec.changeSid" in message
    assert "changeSid is only allowed with clone: true" in message
    _create(custom, namespace, migration("ok", changeSid=True, clone=True))


@pytest.mark.parametrize("path", ["vz/private", "relative", "./vz", "", "/vz/../etc"])
def test_a_relative_or_escaping_target_path_is_refused(custom: Any, namespace: str, path: str) -> None:
    status, message = _refused(_create, custom, namespace, migration("m", target={"host": "node-b", "path": path}))
    assert status == 422
    assert "spec.target.path" in message
    assert "target.path must" in message


def test_an_absolute_target_path_or_none_is_accepted(custom: Any, namespace: str) -> None:
    _create(custom, namespace, migration("abs", target={"host": "node-b", "path": "/vz/vmprivate"}))
    _create(custom, namespace, migration("default", target={"host": "node-b"}))
    assert "path" not in _get(custom, namespace, "default")["spec"]["target"]


def test_the_same_source_and_target_host_is_refused(custom: Any, namespace: str) -> None:
    status, message = _refused(_create, custom, namespace, migration("m", target={"host": "node-a", "path": "/vz"}))
    assert status == 422
    assert "target.host must differ from source.host" in message


@pytest.mark.parametrize("action", ["Abort", "cancel", "Pause"])
def test_an_unknown_action_is_refused_naming_the_allowed_ones(custom: Any, namespace: str, action: str) -> None:
    status, message = _refused(_create, custom, namespace, migration("m", action=action))
    assert status == 422
    assert "spec.action" in message
    assert '"Cancel"' in message and '"ForceComplete"' in message


def test_an_unknown_mode_is_refused(custom: Any, namespace: str) -> None:
    status, message = _refused(_create, custom, namespace, migration("m", mode="Fast"))
    assert status == 422
    assert "spec.mode" in message and '"Live"' in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source", {"host": "node-a", "name": "web-02"}),
        ("target", {"host": "node-c", "path": "/vz/private"}),
        ("target", {"host": "node-b", "path": "/other"}),
        ("mode", "Offline"),
        ("clone", True),
        ("tunnel", False),
        ("compression", False),
        ("bandwidthMiBps", 100),  # absent before: adding a field is a change too
        ("dryRun", True),
        ("retry", {"maxAttempts": 3, "backoffSeconds": 30}),
        ("notBefore", "2030-01-01T00:00:00Z"),
    ],
)
def test_every_spec_field_but_action_is_immutable(custom: Any, namespace: str, field: str, value: Any) -> None:
    _create(custom, namespace, migration("m"))
    status, message = _refused(_update_spec, custom, namespace, "m", **{field: value})
    assert status == 422
    assert f"spec.{field} is immutable: only spec.action may change" in message
    assert _get(custom, namespace, "m")["spec"]["source"]["name"] == "web-01"


def test_action_may_be_set_after_creation_but_cancel_cannot_be_withdrawn(custom: Any, namespace: str) -> None:
    _create(custom, namespace, migration("m"))
    _update_spec(custom, namespace, "m", action="ForceComplete")
    _update_spec(custom, namespace, "m", action="Cancel")
    assert _get(custom, namespace, "m")["spec"]["action"] == "Cancel"

    status, message = _refused(_update_spec, custom, namespace, "m", action=None)
    assert status == 422
    assert "action: Cancel cannot be withdrawn or changed" in message
    status, message = _refused(_update_spec, custom, namespace, "m", action="ForceComplete")
    assert "action: Cancel cannot be withdrawn or changed" in message


def test_unknown_fields_are_pruned(custom: Any, namespace: str) -> None:
    body = migration("m", speed="ludicrous")
    body["spec"]["source"]["zone"] = "eu"
    body["colour"] = "blue"
    _create(custom, namespace, body)
    stored = _get(custom, namespace, "m")
    assert "speed" not in stored["spec"]
    assert "zone" not in stored["spec"]["source"]
    assert "colour" not in stored
    assert stored["spec"]["source"] == {"host": "node-a", "name": "web-01"}


def test_unknown_fields_are_refused_under_strict_field_validation(custom: Any, namespace: str) -> None:
    # What `kubectl apply` asks for by default: a typo fails loudly instead of vanishing.
    status, message = _refused(_create, custom, namespace, migration("m", speed="ludicrous"), field_validation="Strict")
    assert status == 400  # BadRequest: the request, not the object, is malformed
    assert 'unknown field "spec.speed"' in message


def test_status_is_ignored_on_the_main_resource(custom: Any, namespace: str) -> None:
    body = migration("m")
    body["status"] = {"phase": "Succeeded"}
    _create(custom, namespace, body)
    stored = _get(custom, namespace, "m")
    assert stored.get("status", {}).get("phase") is None

    stored["status"] = {"phase": "Failed"}
    custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, "m", stored)
    assert _get(custom, namespace, "m").get("status", {}).get("phase") is None


def test_status_is_written_through_the_status_subresource_only(custom: Any, namespace: str) -> None:
    _create(custom, namespace, migration("m"))
    stored = _get(custom, namespace, "m")
    generation = stored["metadata"]["generation"]
    stored["status"] = {"phase": "Transferring", "mode": "Live", "progress": {"percent": 40}}
    stored["spec"]["mode"] = "Offline"  # spec changes through /status are ignored, not applied
    custom.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, MIGRATIONS, "m", stored)
    after = _get(custom, namespace, "m")
    assert after["status"]["phase"] == "Transferring"
    assert after["status"]["progress"]["percent"] == 40
    assert after["spec"]["mode"] == "Auto"
    assert after["metadata"]["generation"] == generation  # status writes do not bump generation


def test_the_status_schema_is_enforced_too(custom: Any, namespace: str) -> None:
    _create(custom, namespace, migration("m"))
    stored = _get(custom, namespace, "m")
    stored["status"] = {"phase": "Teleporting"}
    status, message = _refused(
        custom.replace_namespaced_custom_object_status, GROUP, VERSION, namespace, MIGRATIONS, "m", stored
    )
    assert status == 422
    assert "status.phase" in message
    stored["status"] = {"progress": {"percent": 101}}
    status, message = _refused(
        custom.replace_namespaced_custom_object_status, GROUP, VERSION, namespace, MIGRATIONS, "m", stored
    )
    assert "status.progress.percent" in message


def test_a_stale_resource_version_conflicts(custom: Any, namespace: str) -> None:
    _create(custom, namespace, migration("m"))
    first = _get(custom, namespace, "m")
    second = _get(custom, namespace, "m")
    first["spec"]["action"] = "ForceComplete"
    custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, MIGRATIONS, "m", first)
    second["spec"]["action"] = "Cancel"
    status, _ = _refused(custom.replace_namespaced_custom_object, GROUP, VERSION, namespace, MIGRATIONS, "m", second)
    assert status == 409


def test_a_host_must_pin_its_host_key(custom: Any, namespace: str) -> None:
    body = host("h")
    del body["spec"]["hostKey"]
    status, message = _refused(_create, custom, namespace, body, HOSTS)
    assert status == 422
    assert "set knownHostsSecretRef or hostKey: host keys are always verified" in message
    _create(custom, namespace, host("with-key"), HOSTS)
    _create(custom, namespace, host("with-known-hosts", knownHostsSecretRef={"name": "kh"}), HOSTS)


def test_a_host_gets_its_defaults_and_refuses_an_unknown_driver(custom: Any, namespace: str) -> None:
    body = host("h")
    del body["spec"]["driver"]
    _create(custom, namespace, body, HOSTS)
    spec = _get(custom, namespace, "h", HOSTS)["spec"]
    assert spec["driver"] == "libvirt"
    assert spec["port"] == 22
    assert spec["user"] == "root"
    status, message = _refused(_create, custom, namespace, host("x", driver="xen"), HOSTS)
    assert status == 422
    assert "spec.driver" in message and '"prlctl"' in message
