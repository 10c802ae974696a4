"""Handler runs (replica.handlers) with a real /bin/sh: environment, exit codes, output,
the timeout killing the whole process group, and config validation."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from binome.storage.replica.core.config import ConfigError, VolumeConfig
from binome.storage.replica.engine import handlers


def env(**kw):
    base = dict(volume="r0", backing="/dev/loop3", meta="/s/meta", conf="/s/volume.json",
                node="n1", peer_node="n2", address="10.0.0.1:7789",
                peer_address="[fd00::2]:7789", handler="split-brain")
    return handlers.handler_env(**{**base, **kw})


def test_environment_is_small_and_drbd_named():
    e = env()
    assert e["DRBD_RESOURCE"] == "r0" and e["DRBD_VOLUME"] == "0"
    assert e["DRBD_BACKING_DEV"] == "/dev/loop3" and e["DRBD_CONF"] == "/s/volume.json"
    assert e["DRBD_MY_ADDRESS"] == "10.0.0.1" and e["DRBD_MY_AF"] == "ipv4"
    assert e["DRBD_PEER_ADDRESS"] == e["DRBD_PEERS"] == "fd00::2"
    assert e["DRBD_PEER_AF"] == "ipv6" and e["DRBD_PEER_NODE"] == "n2"
    assert "DRBD_MINOR" not in e and "HOME" not in e
    assert set(e) <= {"PATH", "LANG", "DRBD_RESOURCE", "DRBD_VOLUME", "BINOME_VOLUME",
                      "BINOME_HANDLER", "DRBD_BACKING_DEV", "DRBD_META_DEV", "DRBD_CONF",
                      "DRBD_MY_NODE", "DRBD_MY_ADDRESS", "DRBD_MY_AF", "DRBD_PEER_NODE",
                      "DRBD_PEERS", "DRBD_PEER_ADDRESS", "DRBD_PEER_AF"}


def test_exit_code_output_and_unconfigured(caplog):
    caplog.set_level("INFO")
    r = asyncio.run(handlers.run("split-brain", 'echo "res=$DRBD_RESOURCE"; echo oops >&2; '
                                 "exit 4", env(), volume="r0"))
    assert r.configured and r.exit_code == 4 and not r.timed_out
    assert "res=r0" in r.output and "oops" in r.output
    assert "helper command: split-brain r0 exit code 4 (0x400)" in caplog.text
    assert "helper split-brain: res=r0" in caplog.text
    r = asyncio.run(handlers.run("split-brain", None, env(), volume="r0"))
    assert not r.configured and r.exit_code == 0


def test_timeout_kills_the_process_group(tmp_path):
    pidfile = tmp_path / "child"
    started = time.monotonic()
    r = asyncio.run(handlers.run(
        "fence-peer", f"sleep 30 & echo $! > {pidfile}; wait", env(), volume="r0",
        timeout=0.5))
    assert r.timed_out and r.exit_code == -9
    assert time.monotonic() - started < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{child}"):
        stat = open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0]
        if stat == "Z":
            break
        assert time.monotonic() < deadline, "the handler's child outlived the timeout"
        time.sleep(0.05)


def test_config_validation():
    base = dict(name="r0", size=4096, backing="/b", meta="/m", socket="/s")
    VolumeConfig.from_dict({**base, "handlers": {"split-brain": "true"}})
    for bad, match in (({"handlers": {"nonsense": "true"}}, "unknown handler"),
                       ({"handlers": {"split-brain": ""}}, "non-empty"),
                       ({"handlers": {"split-brain": 3}}, "non-empty"),
                       ({"handler_timeout": 0}, "handler_timeout"),
                       ({"on_io_error": "panic"}, "on_io_error")):
        with pytest.raises(ConfigError, match=match):
            VolumeConfig.from_dict({**base, **bad})
