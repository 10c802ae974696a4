"""The HA Env protocol (`binome.ha.env.Env`) against every implementation of it (and
the store protocol of the access module's live-session watch against the real store).

mypy checks this file (`make lint`): each `_as_env` function below only type-checks if
the implementation has every method and property of `Env` with compatible signatures.
`SimEnv` is checked next to it, in `binome.ha.sim.env` (the simulator may import the
protocol; the pure `ha` package must not import the daemon's etcd adapter). The runtime
test is the same check for readers who run only pytest: every protocol member exists.
"""

from __future__ import annotations

import inspect

import pytest

from binome.access.sessions import WatchingStore
from binome.ha.agent.etcd_env import EtcdEnv
from binome.ha.env import ClusterEnv, CrmEnv, Env, LrmEnv
from binome.ha.sim.env import SimEnv
from binome.store.client import Store
from tests.unit.ha.fakes import FakeEnv

pytestmark = pytest.mark.unit


def _etcd_env_as_env(env: EtcdEnv) -> Env:
    return env


def _fake_env_as_env(env: FakeEnv) -> Env:
    return env


def _sim_env_as_env(env: SimEnv) -> Env:
    return env


def _store_as_watching(store: Store) -> WatchingStore:
    """The access module's live-session watch (access/sessions.py) uses the real store
    only through this protocol; it must keep matching."""
    return store


def _protocol_members(protocol: type) -> set[str]:
    members: set[str] = set()
    for cls in protocol.__mro__:
        if cls in (ClusterEnv, CrmEnv, LrmEnv, Env):
            members |= {name for name, _ in inspect.getmembers(cls)
                        if not name.startswith("_")}
    return members


@pytest.mark.parametrize("impl", [EtcdEnv, SimEnv, FakeEnv], ids=lambda c: c.__name__)
def test_every_env_implementation_has_every_protocol_member(impl: type) -> None:
    missing = sorted(name for name in _protocol_members(Env) if not hasattr(impl, name)
                     and name not in getattr(impl, "__dataclass_fields__", {}))
    assert missing == [], f"{impl.__name__} lacks {missing}"
