"""Cluster state in etcd: the client wrapper, the key layout, the etcd member process."""

from binome.store import keys
from binome.store.client import Store, StoreUnavailable

__all__ = ["Store", "StoreUnavailable", "keys"]
