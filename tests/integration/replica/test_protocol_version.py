"""An engine never replicates with a peer speaking another protocol version (packet layouts
differ): a real TCP client announcing version 1 is dropped before authentication, and the
engine keeps listening (it connects once both run the same version)."""

from __future__ import annotations

import socket
import time

from binome.storage.replica.core import wire
from binome.storage.replica.core.wire import P
from tests.integration.replica.pairs import free_port, wait_for


def test_a_peer_with_another_protocol_version_is_dropped(engine):
    port = free_port()
    # this engine's address sorts higher than its peer's: it listens
    engine.call("create", name="pv", size="4M", address=f"127.0.0.1:{port}",
                peer_address="127.0.0.1:1", secret="s", node="a", peer_node="b")
    engine.call("up", name="pv")
    try:
        wait_for(engine, lambda s: s["cstate"] == "WFConnection", name="pv")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(wire.json_packet(P.CONNECTION_FEATURES,
                                       {"version": 1, "volume": "pv", "node": "b"}))
            got = b""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break                       # the engine hung up
                got += chunk
            else:
                raise AssertionError("the engine kept the connection")
        cmd, length = wire.parse_header(got[:wire.HEADER.size])
        assert cmd == P.CONNECTION_FEATURES      # its features, then nothing (no challenge)
        assert len(got) == wire.HEADER.size + length
        st = wait_for(engine, lambda s: "incompatible protocol version" in
                      (s["peer"]["last_error"] or ""), name="pv")
        wait_for(engine, lambda s: s["cstate"] == "WFConnection", name="pv")
        assert f"peer 1, mine {wire.PROTOCOL_VERSION}" in st["peer"]["last_error"]
    finally:
        engine.call("down", name="pv", force=True)
        engine.call("delete", name="pv", remove_data=True)
