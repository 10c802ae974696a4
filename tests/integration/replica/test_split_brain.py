"""Split brain provoked for real, for every after-sb policy, between two real engines.

Each case: a synced pair (A Primary), the link dropped on both sides, writes on
both sides while disconnected in standalone mode (fencing dont-care: the
admin's explicit no-quorum mode; B promoted to write), the roles the policy
needs set, then both reconnect. The expected survivor's data is kept and the
victim's backing file equals it afterwards; or the connection is refused
(StandAlone on both, nothing overwritten). The handlers are real shell
commands writing their environment to files: `initial-split-brain` runs on
both sides every time, `split-brain` exactly when unresolved,
`pri-lost-after-sb` on a losing Primary that cannot demote.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from binome.lab.nbd_client import NbdClient
from tests.integration.replica.pairs import (
    MiB,
    Pair,
    connected,
    in_sync,
    log_of,
    nbd_writes,
    standalone,
    wait_for,
)

HANDLERS = ("initial-split-brain", "split-brain", "pri-lost-after-sb", "before-resync-target",
            "after-resync-target")
SB_UNRESOLVED = "Split-Brain detected but unresolved, dropping connection!"
PRIMARY_TARGET = "I shall become SyncTarget, but I am primary!"


@dataclass(frozen=True)
class Case:
    id: str
    p0: str = "disconnect"
    p1: str = "disconnect"
    p2: str = "disconnect"
    roles: tuple[bool, bool] = (False, False)   # (A Primary, B Primary) at reconnect
    wa: int = 1                                 # 4 KiB blocks written on A while split
    wb: int = 1                                 # ... on B
    survivor: str | None = None                 # "a", "b" or None (refused)
    refusal: str = SB_UNRESOLVED
    held_open: str | None = None                # a Primary with an NBD client: cannot demote
    refuser: str = "both"                       # who drops the connection when refused
    demoted: str | None = None                  # the Primary that gave up its role


CASES = [
    # after-sb-0pri: both Secondary at reconnect. A was Primary at the split, B was promoted
    # later (the younger primary).
    Case("0pri-disconnect", wa=2, wb=1),
    Case("0pri-discard-younger-primary", p0="discard-younger-primary", wa=1, wb=3,
         survivor="a"),
    Case("0pri-discard-older-primary", p0="discard-older-primary", wa=3, wb=1, survivor="b"),
    Case("0pri-discard-zero-changes", p0="discard-zero-changes", wa=2, wb=0, survivor="a"),
    Case("0pri-discard-zero-changes-both-changed", p0="discard-zero-changes", wa=2, wb=1),
    Case("0pri-discard-least-changes", p0="discard-least-changes", wa=1, wb=3, survivor="b"),
    Case("0pri-discard-node-alpha", p0="discard-node-alpha", wa=3, wb=1, survivor="b"),
    Case("0pri-discard-node-beta", p0="discard-node-beta", wa=1, wb=3, survivor="a"),
    # after-sb-1pri: one Primary at reconnect.
    Case("1pri-disconnect", p0="discard-least-changes", roles=(True, False), wa=3, wb=1),
    Case("1pri-consensus-secondary-loses", p0="discard-least-changes", p1="consensus",
         roles=(True, False), wa=3, wb=1, survivor="a"),
    Case("1pri-consensus-primary-would-lose", p0="discard-least-changes", p1="consensus",
         roles=(True, False), wa=1, wb=3),
    Case("1pri-discard-secondary", p0="discard-least-changes", p1="discard-secondary",
         roles=(True, False), wa=1, wb=3, survivor="a"),
    Case("1pri-violently-secondary-loses", p0="discard-least-changes", p1="violently-as0p",
         roles=(True, False), wa=3, wb=1, survivor="a"),
    # The 0pri verdict makes the Primary a SyncTarget: rr-conflict (disconnect) refuses.
    Case("1pri-violently-primary-loses", p0="discard-least-changes", p1="violently-as0p",
         roles=(False, True), wa=3, wb=1, refusal=PRIMARY_TARGET, refuser="b"),
    Case("1pri-call-pri-lost-demotes", p0="discard-least-changes",
         p1="call-pri-lost-after-sb", roles=(False, True), wa=3, wb=1, survivor="a",
         demoted="b"),
    Case("1pri-call-pri-lost-held-open", p0="discard-least-changes",
         p1="call-pri-lost-after-sb", roles=(False, True), wa=3, wb=1, held_open="b",
         refuser="b"),
    # after-sb-2pri: both Primary at reconnect.
    Case("2pri-disconnect", p0="discard-least-changes", roles=(True, True), wa=3, wb=1),
    Case("2pri-violently", p0="discard-least-changes", p2="violently-as0p",
         roles=(True, True), wa=3, wb=1, refusal=PRIMARY_TARGET, refuser="b"),
    Case("2pri-call-pri-lost-demotes", p0="discard-least-changes",
         p2="call-pri-lost-after-sb", roles=(True, True), wa=3, wb=1, survivor="a",
         demoted="b"),
    Case("2pri-call-pri-lost-held-open", p0="discard-least-changes",
         p2="call-pri-lost-after-sb", roles=(True, True), wa=3, wb=1, held_open="b",
         refuser="b"),
]


@contextlib.contextmanager
def held_open(sock: str) -> Iterator[None]:
    """An NBD client connected for the duration (the volume cannot demote meanwhile)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        client = asyncio.run_coroutine_threadsafe(NbdClient.connect(sock, "r0"), loop).result(20)
        try:
            yield
        finally:
            asyncio.run_coroutine_threadsafe(client.close(), loop).result(20)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def handler_files(d: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in d.iterdir()}


def wait_files(d: Path, names: set[str], timeout: float = 20) -> dict[str, str]:
    """Handlers run in the background: poll until their files are complete."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        files = handler_files(d)
        if names <= set(files) and all(files[n].endswith("END\n") for n in names):
            return files
        assert time.monotonic() < deadline, f"handler files {sorted(files)}, want {names}"
        time.sleep(0.05)


def check_split_brain_record(pair: Pair, case: Case) -> None:
    """The status's `split_brain` (what the daemon's notifications follow): resolved on
    both with the policy and the survivor's name; unresolved on a side that refused,
    naming one reporter (the first name when both refused, else the refuser)."""
    names = {"a": "alpha", "b": "beta"}
    primaries = sum(case.roles)
    policy = (case.p0, case.p1, case.p2)[primaries]
    for side, engine in (("a", pair.a), ("b", pair.b)):
        rec = engine.call("status", name="r0")["split_brain"]
        assert rec is not None, (side, case.id)
        refused = case.survivor is None and case.refuser in (side, "both")
        if refused:
            assert rec["state"] == "detected", (side, rec)
            assert rec["reporter"] == ("alpha" if case.refuser == "both"
                                       else names[case.refuser]), rec
        elif case.survivor is not None or case.refuser != "both":
            assert rec["state"] == "resolved", (side, rec)
            winner = case.survivor or ("a" if case.refuser == "b" else "b")
            assert (rec["survivor"], rec["victim"]) == (
                names[winner], names["b" if winner == "a" else "a"]), rec
        assert rec["policy"].startswith(f"after-sb-{primaries}pri ")
        if not policy.startswith("discard-node-"):
            assert rec["policy"] == f"after-sb-{primaries}pri {policy}" or \
                (refused and rec["policy"].startswith(f"after-sb-{primaries}pri")), rec
        assert sorted(rec["primaries"]) == sorted(
            names[s] for s, p in zip("ab", case.roles, strict=True) if p), rec


def make_pair(pair: Pair, case: Case, hdir: Path) -> None:
    cmd = f"{{ env; echo END; }} > {hdir}/$DRBD_MY_NODE.$BINOME_HANDLER"
    pair.create(size="4M", after_sb_0pri=case.p0, after_sb_1pri=case.p1,
                after_sb_2pri=case.p2, handlers={h: cmd for h in HANDLERS},
                handler_timeout=20)
    wait_for(pair.a, connected)
    pair.a.call("primary", name="r0", force=True)
    wait_for(pair.a, in_sync)
    wait_for(pair.b, in_sync)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_after_split_brain_policy(pair, tmp_path, case):
    hdir = tmp_path / "handlers"
    hdir.mkdir()
    make_pair(pair, case, hdir)
    # The initial full sync ran before-/after-resync-target on the target (B) only.
    files = wait_files(hdir, {"beta.before-resync-target", "beta.after-resync-target"})
    assert not any(n.startswith("alpha.") for n in files)
    for n in files:
        (hdir / n).unlink()

    # Split: both sides drop the link; both write (B promoted) in standalone mode.
    pair.a.call("disconnect", name="r0")
    pair.b.call("disconnect", name="r0")
    sock_a = pair.a.call("status", name="r0")["socket"]
    sock_b = pair.b.call("primary", name="r0")["socket"]
    common = 3 * MiB                            # a block both sides write differently
    if case.wa:
        asyncio.run(nbd_writes(sock_a, [(common, b"A" * 4096)] + [
            (MiB + i * 8192, os.urandom(4096)) for i in range(case.wa - 1)]))
    if case.wb:
        asyncio.run(nbd_writes(sock_b, [(common, b"B" * 4096)] + [
            (2 * MiB + i * 8192, os.urandom(4096)) for i in range(case.wb - 1)]))
    for engine, primary in zip((pair.a, pair.b), case.roles, strict=True):
        if not primary:
            engine.call("secondary", name="r0")
    assert [pair.a.call("status", name="r0")["role"],
            pair.b.call("status", name="r0")["role"]] == [
        "Primary" if r else "Secondary" for r in case.roles]
    before = {"a": pair.data(pair.a), "b": pair.data(pair.b)}
    assert before["a"] != before["b"] or not case.wa or not case.wb

    with contextlib.ExitStack() as stack:
        if case.held_open:
            stack.enter_context(held_open(sock_a if case.held_open == "a" else sock_b))
        pair.a.call("connect", name="r0")
        pair.b.call("connect", name="r0")
        if case.survivor is None:
            # The refusing side goes StandAlone. When only one side refuses (the other
            # would have been the sync source), the other loses the link and retries.
            refusers = {"a": [pair.a], "b": [pair.b], "both": [pair.a, pair.b]}[case.refuser]
            for engine in refusers:
                st = wait_for(engine, standalone)
                assert st["peer"]["last_error"] == case.refusal, st
            for engine in (e for e in (pair.a, pair.b) if e not in refusers):
                assert engine.call("status", name="r0")["cstate"] != "Connected"
                engine.call("disconnect", name="r0")
            # Nothing was overwritten on either side.
            assert pair.data(pair.a) == before["a"]
            assert pair.data(pair.b) == before["b"]
        else:
            winner, loser = ((pair.a, pair.b) if case.survivor == "a" else (pair.b, pair.a))
            wait_for(loser, in_sync)
            wait_for(winner, in_sync)
            assert pair.data(winner) == before[case.survivor]          # the survivor kept all
            assert pair.data(loser) == before[case.survivor]           # the victim equals it
            expected = ("this" if engine is winner else "peer" for engine in (pair.a, pair.b))
            for engine, side in zip((pair.a, pair.b), expected, strict=True):
                assert (f"automatically solved. Sync from {side} node") in log_of(engine)
        roles = [pair.a.call("status", name="r0")["role"],
                 pair.b.call("status", name="r0")["role"]]
    check_split_brain_record(pair, case)
    if case.demoted:
        idx = 0 if case.demoted == "a" else 1
        assert roles[idx] == "Secondary"
        assert "Successfully gave up primary role." in log_of((pair.a, pair.b)[idx])

    # Handlers: initial-split-brain on both every time; split-brain when unresolved by
    # policy; pri-lost-after-sb on the Primary that lost and could not demote.
    want = {"alpha.initial-split-brain", "beta.initial-split-brain"}
    unresolved_sb = (case.survivor is None and case.refusal == SB_UNRESOLVED
                     and case.refuser == "both")
    if unresolved_sb:
        want |= {"alpha.split-brain", "beta.split-brain"}
    if case.held_open:
        node = "alpha" if case.held_open == "a" else "beta"
        want |= {f"{node}.pri-lost-after-sb", f"{node}.split-brain"}
    if case.survivor is not None:
        victim = "beta" if case.survivor == "a" else "alpha"
        want |= {f"{victim}.before-resync-target", f"{victim}.after-resync-target"}
    files = wait_files(hdir, want)
    assert set(handler_files(hdir)) == want
    env = dict(line.split("=", 1) for line in files["alpha.initial-split-brain"].splitlines()
               if "=" in line)
    assert env["DRBD_RESOURCE"] == "r0" and env["BINOME_HANDLER"] == "initial-split-brain"
    assert env["DRBD_MY_NODE"] == "alpha" and env["DRBD_PEER_NODE"] == "beta"
    assert env["DRBD_PEER_ADDRESS"] == "127.0.0.1" and env["DRBD_PEER_AF"] == "ipv4"
    assert env["DRBD_BACKING_DEV"].endswith("/volumes/r0/data.img")
    assert env["DRBD_CONF"].endswith("/volumes/r0/volume.json")
    assert all("s3cret" not in text for text in handler_files(hdir).values())


class EngineEvents:
    """The engine's `events` stream read in a thread (a plain blocking unix socket)."""

    def __init__(self, control_path: str) -> None:
        import json
        import socket

        self._json = json
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(control_path)
        self.sock.sendall(b'{"id": 1, "cmd": "events", "args": {}}\n')
        self.events: list[dict] = []
        self._file = self.sock.makefile("rb")
        assert self._json.loads(self._file.readline())["ok"]
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self._file:
                self.events.append(self._json.loads(line))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            import socket
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(10)


def test_split_brain_handler_events_and_exit_codes(pair, tmp_path):
    """The engine's event stream reports each handler call and its exit code; a failing
    before-resync-target handler (exit 3) drops the connection before the target changes."""
    import time
    pair.create(size="4M", handlers={"split-brain": "echo split; exit 3",
                                     "before-resync-target": "exit 0"})
    wait_for(pair.a, connected)
    pair.a.call("primary", name="r0", force=True)
    wait_for(pair.b, in_sync)
    pair.a.call("disconnect", name="r0")
    pair.b.call("disconnect", name="r0")
    asyncio.run(nbd_writes(pair.a.call("status", name="r0")["socket"], [(MiB, b"a" * 4096)]))
    asyncio.run(nbd_writes(pair.b.call("primary", name="r0")["socket"], [(MiB, b"b" * 4096)]))
    pair.a.call("secondary", name="r0")
    pair.b.call("secondary", name="r0")
    events = EngineEvents(pair.a.control)
    try:
        pair.a.call("connect", name="r0")
        pair.b.call("connect", name="r0")
        deadline = time.monotonic() + 20
        want = [("call", "initial-split-brain", None), ("response", "initial-split-brain", 0),
                ("call", "split-brain", None), ("response", "split-brain", 3)]
        while True:
            got = [(e["event"], e["helper"], e.get("status")) for e in list(events.events)
                   if e.get("event") in ("call", "response")]
            if all(w in got for w in want):
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
        assert {"event": "exists-end"} in events.events
    finally:
        events.close()
    log = log_of(pair.a)
    assert "helper command: split-brain r0 exit code 3 (0x300)" in log
    assert "helper split-brain: split" in log                 # its output, in the log
    assert "helper command: initial-split-brain (no handler configured)" in log
    # Recovery by hand; a before-resync-target that fails refuses to become the target.
    wait_for(pair.b, standalone)
    wait_for(pair.a, standalone)
    before_b = pair.data(pair.b)
    handlers_b = pair.b.state_dir / "volumes" / "r0" / "volume.json"
    import json
    cfg = json.loads(handlers_b.read_text())
    cfg["handlers"]["before-resync-target"] = "exit 5"
    handlers_b.write_text(json.dumps(cfg))          # read again by `up` after a down
    pair.b.call("down", name="r0")
    pair.b.call("up", name="r0")
    pair.b.call("disconnect", name="r0")
    pair.b.call("connect", name="r0", discard_my_data=True)
    pair.a.call("connect", name="r0")
    st = wait_for(pair.b, standalone)
    assert st["peer"]["last_error"] == ("before-resync-target handler returned 5, dropping "
                                        "connection.")
    assert pair.data(pair.b) == before_b             # not touched
    assert "helper command: before-resync-target r0 exit code 5" in log_of(pair.b)
