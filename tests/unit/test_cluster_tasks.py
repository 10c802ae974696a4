"""/cluster/tasks (PVE's Cluster.pm `tasks` over pvestatd's per-node `active` lists): the
per-node selection, the entry shape and who sees what."""

from binome.api.methods.tasks import (
    cluster_task_entry,
    from_node_list,
    visible_tasks,
)
from binome.tasks.manager import RECENT_TASKS, TaskRecord, recent_tasks
from binome.tasks.upid import Upid


def upid(pid: int, start: int, user: str = "alice@pve", node: str = "n1") -> Upid:
    return Upid(node, pid, 0x1234, start, "qmstart", "100", user)


def rec(pid: int, start: int, running: bool = False, user: str = "alice@pve") -> TaskRecord:
    if running:
        return TaskRecord(upid(pid, start, user))
    return TaskRecord(upid(pid, start, user), "stopped", "OK", start + 5)


def test_recent_keeps_every_running_task_then_the_newest_finished():
    records = [rec(i, 1000 + i) for i in range(40)] + [rec(100, 5, running=True),
                                                      rec(101, 6, running=True)]
    got = recent_tasks(records)
    assert len(got) == RECENT_TASKS == 25
    assert [r.upid.pid for r in got[:2]] == [101, 100]            # running first
    assert [r.upid.pid for r in got[2:]] == list(range(39, 16, -1))
    many = [rec(i, i, running=True) for i in range(30)]
    assert len(recent_tasks([*many, rec(99, 99)])) == 30          # running never dropped


def test_entry_shape_is_pves_active_list():
    finished = cluster_task_entry(str(upid(7, 1700000000)), running=False, status="OK",
                                  endtime=1700000005)
    assert finished == {"upid": str(upid(7, 1700000000)), "node": "n1",
                        "starttime": 1700000000, "type": "qmstart", "id": "100",
                        "user": "alice@pve", "endtime": 1700000005, "status": "OK"}
    running = cluster_task_entry(str(upid(8, 1700000001, "alice@pve!ci")), running=True)
    # PVE's GUI takes `pid` as "still running"; a token's task names user and token apart
    assert running["pid"] == 8 and "status" not in running and "endtime" not in running
    assert (running["user"], running["tokenid"]) == ("alice@pve", "ci")
    assert "pstart" not in running and "pstart" not in finished


def test_from_node_list_reads_a_nodes_task_index():
    items = [{"upid": str(upid(i, 2000 + i, node="n2")), "status": "OK", "endtime": 2010 + i}
             for i in range(30)]
    items.insert(0, {"upid": str(upid(50, 1, node="n2")), "status": "RUNNING"})
    items.append({"upid": "garbage", "status": "OK"})
    got = from_node_list(items)
    assert len(got) == 25 and got[0]["pid"] == 50 and got[0]["node"] == "n2"
    assert got[1]["status"] == "OK" and got[1]["endtime"] == 2010


def test_visibility_follows_pve():
    entries = [cluster_task_entry(str(upid(1, 1, "alice@pve")), running=True),
               cluster_task_entry(str(upid(2, 2, "alice@pve!ci")), running=True),
               cluster_task_entry(str(upid(3, 3, "bob@pve")), running=True)]
    assert visible_tasks(entries, "bob@pve", see_all=True) == entries
    # a user sees their own tasks and their tokens'
    assert [e["pid"] for e in visible_tasks(entries, "alice@pve", False)] == [1, 2]
    # PVE compares the caller with the task's user part: a token sees none of its own
    assert visible_tasks(entries, "alice@pve!ci", False) == []
