"""A one-member etcd with mutual TLS on its own loopback address, for tests of code that
owns etcd keys (the access repository, the HA fencer) without a whole binome cluster."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from binome.cluster import pki
from binome.store.client import Store
from tests.integration.harness import stop_process


@contextlib.contextmanager
def single_etcd(root: Path, address: str, ca_name: str) -> Iterator[dict[str, Path]]:
    """Run etcd on `address` (client port 2379) with certificates made here; yields the
    paths of the CA, the client certificate and its key. Stopped by pid on exit."""
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed (make setup installs it)")
    ca_key, ca_cert = pki.create_ca(ca_name)
    key = pki.new_key()
    cert = pki.sign_node_cert(ca_key, ca_cert, pki.make_csr(key, "n1"), "n1", [address])
    paths = {"ca": root / "ca.pem", "cert": root / "node.pem", "key": root / "node.key"}
    paths["ca"].write_bytes(pki.cert_pem(ca_cert))
    paths["cert"].write_bytes(pki.cert_pem(cert))
    paths["key"].write_bytes(pki.key_pem(key))
    client, peer = f"https://{address}:2379", f"https://{address}:2380"
    with open(root / "etcd.log", "wb") as log:
        proc = subprocess.Popen(
            ["etcd", "--name", "n1", "--data-dir", str(root / "data"),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"n1={peer}",
             "--client-cert-auth", "--trusted-ca-file", str(paths["ca"]),
             "--cert-file", str(paths["cert"]), "--key-file", str(paths["key"]),
             "--peer-client-cert-auth", "--peer-trusted-ca-file", str(paths["ca"]),
             "--peer-cert-file", str(paths["cert"]), "--peer-key-file", str(paths["key"])],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        yield paths
    finally:
        stop_process(proc)


async def empty_store(paths: dict[str, Path], address: str) -> Store:
    """A client of that etcd once it answers, with everything under /binome/ deleted."""
    store = Store(address, 2379, ca=paths["ca"], cert=paths["cert"], key=paths["key"])
    for _ in range(100):
        try:
            await store.delete_prefix("/binome/")
            return store
        except Exception:   # etcd is still starting
            await asyncio.sleep(0.1)
    await store.close()
    raise AssertionError(f"etcd on {address} did not answer")
