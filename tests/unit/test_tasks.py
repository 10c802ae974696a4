"""TaskManager: task results, the task list and log, and recovery from the on-disk index."""

import asyncio
import json

import pytest

from binome.tasks import manager as manager_mod
from binome.tasks.manager import TaskFailed, TaskManager
from binome.tasks.upid import Upid

USER = "root@pam"


@pytest.fixture
def mgr(tmp_path):
    return TaskManager("n1", tmp_path / "tasks")


async def run(mgr, body, type_="test", id_="", user=USER):
    upid = mgr.start(type_, id_, user, body)
    await mgr.wait(upid)
    return upid


def log_lines(mgr, upid):
    return mgr.log_path(Upid.parse(upid)).read_text().splitlines()


def index_records(mgr):
    out = []
    for line in mgr.index_path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass            # the deliberately corrupt line some tests write
    return out


async def ok_body(task):
    task.log("working")


async def test_successful_task(mgr):
    upid = await run(mgr, ok_body, "qmstart", "100")
    u = Upid.parse(upid)
    assert (u.node, u.type, u.id, u.user) == ("n1", "qmstart", "100", USER)
    assert log_lines(mgr, upid) == ["working", "TASK OK"]
    rec = mgr.get(upid)
    assert rec.status == "stopped"
    assert rec.exitstatus == "OK"
    assert rec.endtime is not None
    status = rec.to_status()
    assert status["status"] == "stopped"
    assert status["exitstatus"] == "OK"
    assert status["upid"] == upid


async def test_failed_task(mgr):
    async def body(task):
        task.log("step 1")
        raise TaskFailed("boom")

    upid = await run(mgr, body)
    assert log_lines(mgr, upid) == ["step 1", "TASK ERROR: boom"]
    assert mgr.get(upid).exitstatus == "boom"
    assert mgr.get(upid).status == "stopped"


async def test_unexpected_exception_uses_first_line(mgr):
    async def body(task):
        raise RuntimeError("first\nsecond")

    upid = await run(mgr, body)
    assert log_lines(mgr, upid)[-1] == "TASK ERROR: first"
    assert mgr.get(upid).exitstatus == "first"


async def test_exception_without_message_uses_type_name(mgr):
    async def body(task):
        raise KeyError()

    upid = await run(mgr, body)
    assert mgr.get(upid).exitstatus == "KeyError"


async def test_warnings(mgr):
    async def body(task):
        task.warn("disk almost full")
        task.log("still fine")
        task.warn("slow")

    upid = await run(mgr, body)
    assert log_lines(mgr, upid) == ["WARN: disk almost full", "still fine", "WARN: slow",
                                    "TASK WARNINGS: 2"]
    assert mgr.get(upid).exitstatus == "WARNINGS: 2"
    assert mgr.list()[0][0]["status"] == "WARNINGS: 2"


async def test_multiline_log_message_split(mgr):
    async def body(task):
        task.log("a\nb")
        task.log("")

    upid = await run(mgr, body)
    assert log_lines(mgr, upid) == ["a", "b", "", "TASK OK"]


async def test_stop_running_task(mgr):
    started = asyncio.Event()

    async def body(task):
        started.set()
        await asyncio.Event().wait()

    upid = mgr.start("test", "", USER, body)
    await started.wait()
    assert mgr.stop(upid) is True
    await mgr.wait(upid)
    assert mgr.get(upid).exitstatus == "interrupted by signal"
    assert log_lines(mgr, upid)[-2:] == ["received interrupt", "TASK ERROR: interrupted by signal"]
    assert mgr.stop(upid) is False


async def test_list_newest_first_with_total(mgr):
    upids = [await run(mgr, ok_body, "t", str(i)) for i in range(4)]
    items, total = mgr.list()
    assert total == 4
    assert [i["upid"] for i in items] == upids[::-1]
    assert all(i["status"] == "OK" and i["endtime"] for i in items)
    items, total = mgr.list(start=1, limit=2)
    assert total == 4
    assert [i["upid"] for i in items] == [upids[2], upids[1]]


async def test_list_filters(mgr):
    async def failing(task):
        raise TaskFailed("nope")

    ok_a = await run(mgr, ok_body, "vzdump", "100", user="alice@pve")
    bad = await run(mgr, failing, "qmstart", "101")
    ok_b = await run(mgr, ok_body, "qmstart", "100")

    def upids(**kw):
        items, total = mgr.list(**kw)
        assert total == len(items)
        return {i["upid"] for i in items}

    assert upids(typefilter="qmstart") == {bad, ok_b}
    assert upids(errors=True) == {bad}
    assert upids(userfilter="alice") == {ok_a}
    assert upids(vmid="100") == {ok_a, ok_b}
    assert upids(vmid=101) == {bad}
    assert upids(statusfilter="error") == {bad}
    assert upids(statusfilter="ok") == {ok_a, ok_b}


async def test_list_source_active_archive_all(mgr):
    release = asyncio.Event()

    async def waiting(task):
        await release.wait()

    done = await run(mgr, ok_body)
    running = mgr.start("long", "", USER, waiting)
    await asyncio.sleep(0)

    def upids(source):
        return [i["upid"] for i in mgr.list(source=source)[0]]

    assert upids("active") == [running]
    assert upids("archive") == [done]
    assert upids("all") == [running, done]
    assert mgr.list(source="active")[0][0]["status"] == "RUNNING"
    assert mgr.get(running).to_status()["status"] == "running"
    assert "exitstatus" not in mgr.get(running).to_status()

    release.set()
    await mgr.wait(running)
    assert upids("active") == []
    assert set(upids("archive")) == {running, done}


async def test_read_log_numbering(mgr):
    async def body(task):
        for i in range(1, 6):
            task.log(f"line {i}")

    upid = await run(mgr, body)
    lines, total = mgr.read_log(upid)
    assert total == 6
    assert lines[0] == {"n": 1, "t": "line 1"}
    assert lines[-1] == {"n": 6, "t": "TASK OK"}
    lines, total = mgr.read_log(upid, start=2, limit=2)
    assert total == 6
    assert lines == [{"n": 3, "t": "line 3"}, {"n": 4, "t": "line 4"}]
    lines, _ = mgr.read_log(upid, start=4, limit=0)
    assert [x["n"] for x in lines] == [5, 6]
    assert mgr.read_log("UPID:n1:00000099:00000001:00000001:x::root@pam:") == ([], 0)


async def test_listener_notified(mgr):
    seen = []
    mgr.listeners.append(lambda r: seen.append((str(r.upid), r.status)))
    mgr.listeners.append(lambda r: 1 / 0)      # a failing listener must not break the task
    upid = await run(mgr, ok_body)
    assert seen == [(upid, "running"), (upid, "stopped")]
    assert mgr.get(upid).exitstatus == "OK"


def test_interrupted_task_marked_on_restart(tmp_path):
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    left = Upid("n1", 7, 1234, 1_700_000_000, "qmstart", "100", USER)
    finished = Upid("n1", 3, 1234, 1_699_999_000, "vzdump", "100", USER)
    lines = [
        {"event": "start", "upid": str(finished)},
        {"event": "end", "upid": str(finished), "exitstatus": "OK", "endtime": 1_699_999_100},
        {"event": "start", "upid": str(left)},
    ]
    (tasks_dir / "index.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines)
                                           + "{not json\n")
    mgr = TaskManager("n1", tasks_dir)
    rec = mgr.get(str(left))
    assert rec.status == "stopped"
    assert rec.exitstatus == "unexpected status"
    assert rec.endtime is not None
    assert mgr.get(str(finished)).exitstatus == "OK"
    assert mgr.get(str(finished)).endtime == 1_699_999_100
    assert mgr.log_path(left).read_text().splitlines()[-1] == "TASK ERROR: unexpected status"
    assert {"event": "end", "upid": str(left), "exitstatus": "unexpected status",
            "endtime": rec.endtime} in index_records(mgr)
    # the next task continues after the highest serial seen
    assert mgr.new_upid("t", "", USER).pid == 8
    # and a third manager does not mark it again
    again = TaskManager("n1", tasks_dir)
    assert again.get(str(left)).exitstatus == "unexpected status"
    ends = [r for r in index_records(again) if r["event"] == "end" and r["upid"] == str(left)]
    assert len(ends) == 1


async def test_serials_increase_across_managers(tmp_path):
    first = TaskManager("n1", tmp_path / "tasks")
    a = Upid.parse(await run(first, ok_body))
    b = Upid.parse(await run(first, ok_body))
    assert b.pid == a.pid + 1
    second = TaskManager("n1", tmp_path / "tasks")
    c = Upid.parse(await run(second, ok_body))
    assert c.pid > b.pid
    items, total = second.list()
    assert total == 3
    assert items[0]["upid"] == str(c)


def test_other_nodes_serials_ignored(tmp_path):
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    other = Upid("n2", 500, 1, 1_700_000_000, "t", "", USER)
    (tasks_dir / "index.jsonl").write_text(
        json.dumps({"event": "start", "upid": str(other)}) + "\n"
        + json.dumps({"event": "end", "upid": str(other), "exitstatus": "OK",
                      "endtime": 1_700_000_001}) + "\n")
    mgr = TaskManager("n1", tasks_dir)
    assert mgr.new_upid("t", "", USER).pid == 1


def test_compaction_keeps_newest(tmp_path, monkeypatch):
    monkeypatch.setattr(manager_mod, "MAX_TASKS_KEPT", 2)
    tasks_dir = tmp_path / "tasks"
    (tasks_dir / "log").mkdir(parents=True)
    upids = [Upid("n1", i, 1, 1_700_000_000 + i, "t", "", USER) for i in range(1, 5)]
    lines = []
    for u in upids:
        lines.append({"event": "start", "upid": str(u)})
        lines.append({"event": "end", "upid": str(u), "exitstatus": "OK", "endtime": 1})
        (tasks_dir / "log" / f"{u.starttime:08X}-{u.pid:08X}.log").write_text("TASK OK\n")
    (tasks_dir / "index.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    mgr = TaskManager("n1", tasks_dir)
    assert set(mgr.records) == {str(upids[2]), str(upids[3])}
    assert not mgr.log_path(upids[0]).exists()
    assert mgr.log_path(upids[3]).exists()
    assert {r["upid"] for r in index_records(mgr)} == {str(upids[2]), str(upids[3])}
    assert mgr.new_upid("t", "", USER).pid == 5


async def test_torn_index_line_does_not_swallow_next_task(tmp_path):
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "index.jsonl").write_text('{"event": "end", "upid": "UPID:n1:0000')
    first = TaskManager("n1", tasks_dir)
    upid = await run(first, ok_body)
    second = TaskManager("n1", tasks_dir)
    assert second.get(upid) is not None
