"""The hosts' credentials cache (kube/hosts.py AccessCache): a migration's passes do not read Secrets
again while the host is unchanged, and never keep what may be stale past a probe's interval, a spec
change, a recreated host or a refusal."""

from __future__ import annotations

from typing import Any, cast

import pytest

from tests.unit.test_host_trust import KEY, KNOWN, _host, _secret, _Secrets
from vemigrate import reconcile
from vemigrate.api.host import HypervisorHost
from vemigrate.core.observation import HostObservation
from vemigrate.drivers.errors import PermanentError
from vemigrate.kube import hosts


class _Counted(_Secrets):
    def __init__(self, *secrets: Any) -> None:
        super().__init__(*secrets)
        self.reads = 0

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        self.reads += 1
        return super().read_namespaced_secret(name, namespace)

    def rotate(self, key: str) -> None:
        self.secrets["node-a-ssh"] = _secret("node-a-ssh", {"ssh-privatekey": key.encode()})


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _versioned(uid: str = "u1", generation: int = 1) -> HypervisorHost:
    host = _host()
    return host.model_copy(update={"metadata": {**host.metadata, "uid": uid, "generation": generation}})


def _setup() -> tuple[_Counted, _Clock, hosts.AccessCache]:
    clock = _Clock()
    return _Counted(_secret("node-a-ssh", KEY), _secret("known-hosts", KNOWN)), clock, hosts.AccessCache(60, clock)


async def test_a_second_pass_within_the_interval_reads_no_secret() -> None:
    kube, clock, cache = _setup()
    first = await cache.resolve(kube, "ns", _versioned())
    assert kube.reads == 2  # credentials and known_hosts
    clock.now += 59
    assert await cache.resolve(kube, "ns", _versioned()) is first
    assert kube.reads == 2


async def test_a_rotated_key_is_used_after_the_interval_or_at_once_by_a_probe() -> None:
    kube, clock, cache = _setup()
    await cache.resolve(kube, "ns", _versioned())
    kube.rotate("rotated-1")
    assert (await cache.resolve(kube, "ns", _versioned(), fresh=True)).private_key == "rotated-1"
    kube.rotate("rotated-2")
    assert (await cache.resolve(kube, "ns", _versioned())).private_key == "rotated-1"  # within the interval
    clock.now += 61
    assert (await cache.resolve(kube, "ns", _versioned())).private_key == "rotated-2"


@pytest.mark.parametrize("changed", [{"generation": 2}, {"uid": "u2"}], ids=["spec changed", "host recreated"])
async def test_a_changed_or_recreated_host_is_read_again(changed: dict[str, Any]) -> None:
    kube, _, cache = _setup()
    await cache.resolve(kube, "ns", _versioned())
    kube.rotate("new")
    assert (await cache.resolve(kube, "ns", _versioned(**changed))).private_key == "new"


async def test_a_forgotten_host_is_read_again() -> None:
    kube, _, cache = _setup()
    await cache.resolve(kube, "ns", _versioned())
    kube.rotate("new")
    cache.forget("ns", "node-a")
    assert (await cache.resolve(kube, "ns", _versioned())).private_key == "new"


async def test_a_read_that_fails_leaves_nothing_cached() -> None:
    """A probe that finds the Secret gone drops what an earlier read had cached: the next pass reads
    again, and says why it cannot use the host."""
    kube, _, cache = _setup()
    await cache.resolve(kube, "ns", _versioned())
    del kube.secrets["node-a-ssh"]
    for fresh in (True, False):
        with pytest.raises(hosts.HostConfigError) as caught:
            await cache.resolve(kube, "ns", _versioned(), fresh=fresh)
        assert caught.value.reason == "SecretNotFound"


@pytest.mark.parametrize("cached", [True, False], ids=["cached credentials", "credentials read this pass"])
async def test_a_refusal_with_cached_credentials_is_not_final(cached: bool) -> None:
    """Credentials kept from an earlier read may have been rotated since: a host refusing them is not
    reachable this pass, the cache entry is dropped, and only a refusal of freshly read ones is final."""
    forgotten: list[bool] = []

    async def refuse(driver: object) -> None:
        raise PermanentError("AuthenticationFailed", "node-a refused the key")

    host = reconcile._Host(
        HostObservation(name="node-a", reachable=None),
        driver=cast(Any, object()),
        cached=cached,
        forget=lambda: forgotten.append(True),
    )
    assert await reconcile._ask(host, refuse) is None
    assert (host.obs.reachable, host.obs.error_reason) == (False, "AuthenticationFailed")
    assert host.obs.permanent is not cached
    assert forgotten == [True]
