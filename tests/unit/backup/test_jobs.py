"""Backup job records: PVE's rules for the guest selection, the schedule, retention and the
options that need a storage (binome.backup.jobs.build_job), and the prune dry run over a
storage listing."""

from __future__ import annotations

from datetime import datetime

import pytest

from binome.backup.jobs import (
    CHANGED,
    JobSettingsError,
    build_job,
    new_job_id,
    parse_vmid_list,
    public_record,
    stamp_change,
)
from binome.backup.prune import PruneOptions, mark_backup_list


def _errors(old, settings, delete=()):
    with pytest.raises(JobSettingsError) as info:
        build_job(old, settings, delete)
    return info.value.errors


def test_create_normalises_and_defaults() -> None:
    record = build_job(None, {"schedule": "mon..fri 21:30", "vmid": "101; 100 101",
                              "enabled": True, "prune-backups": "keep-daily=7,keep-last=2",
                              "storage": "local", "protected": True})
    assert record == {"type": "vzdump", "schedule": "mon..fri 21:30", "vmid": "101,100",
                      "enabled": 1, "prune-backups": "keep-last=2,keep-daily=7",
                      "storage": "local", "protected": 1}


def test_exclude_implies_all_and_selection_is_exclusive() -> None:
    assert build_job(None, {"schedule": "daily", "exclude": "100"})["all"] == 1
    assert _errors(None, {"schedule": "daily", "vmid": "100", "all": True}) == {
        "all": "option conflicts with option 'vmid'"}
    assert "vmid" in _errors(None, {"schedule": "daily"})
    pool = build_job(None, {"schedule": "daily", "pool": "prod", "exclude": "100"})
    assert "all" not in pool and pool["exclude"] == "100"


def test_update_replaces_the_selection_like_pve() -> None:
    old = build_job(None, {"schedule": "daily", "all": True, "exclude": "100"})
    new = build_job(old, {"vmid": "200"})
    assert new["vmid"] == "200" and "all" not in new and "exclude" not in new
    back = build_job(new, {"all": True})
    assert back["all"] == 1 and "vmid" not in back
    pooled = build_job(back, {"pool": "prod"})
    assert pooled["pool"] == "prod" and "all" not in pooled and "vmid" not in pooled
    assert build_job(None, {"schedule": "daily", "all": True})["enabled"] == 1


def test_bad_values_name_their_parameter() -> None:
    errors = _errors(None, {"schedule": "mon..fri 25:00", "vmid": "99",
                            "prune-backups": "keep-last=x", "notes-template": "{{vmid}}"})
    assert errors["schedule"].startswith("invalid calendar event 'mon..fri 25:00'")
    assert errors["vmid"] == "value '99' does not look like a valid VM ID"
    assert "keep-last" in errors["prune-backups"]
    assert errors["notes-template"] == "option requires option 'storage'"
    assert _errors(None, {"vmid": "100"}) == {
        "schedule": "neither 'starttime' nor 'schedule' were set"}
    assert _errors(None, {"schedule": "daily", "vmid": "100", "exclude": "101"}) == {
        "exclude": "option conflicts with option 'vmid'"}


def test_delete_rules() -> None:
    old = build_job(None, {"schedule": "daily", "vmid": "100", "comment": "x"})
    assert "comment" not in build_job(old, {}, ["comment"])
    assert _errors(old, {}, ["schedule"]) == {
        "delete": "unable to delete required option 'schedule'"}
    assert _errors(old, {}, ["bogus"]) == {"delete": "unknown option 'bogus'"}
    assert "at the same time" in _errors(old, {"comment": "y"}, ["comment"])["delete"]


def test_change_stamp_only_for_schedule_or_enabled() -> None:
    old = build_job(None, {"schedule": "daily", "vmid": "100"})
    stamp_change(None, old, 1000.0)
    assert old[CHANGED] == 1000
    same = build_job(old, {"comment": "c"})
    stamp_change(old, same, 2000.0)
    assert same[CHANGED] == 1000
    moved = build_job(old, {"schedule": "weekly"})
    stamp_change(old, moved, 3000.0)
    assert moved[CHANGED] == 3000
    assert CHANGED not in public_record("j", moved)
    assert public_record("j", moved)["enabled"] == 1


def test_ids_and_vmid_lists() -> None:
    job_id = new_job_id()
    assert job_id.startswith("backup-") and len(job_id) == len("backup-") + 13
    assert parse_vmid_list("100, 101;102 100") == [100, 101, 102]
    with pytest.raises(ValueError):
        parse_vmid_list("100,abc")


def test_prune_dry_run_over_a_listing_groups_by_guest() -> None:
    def backup(vmid: int, day: int, protected: int = 0) -> dict:
        ctime = int(datetime(2026, 12, day, 20, 0).timestamp())
        return {"volid": f"local:backup/vzdump-qemu-{vmid}-{day}", "ctime": ctime,
                "vmid": vmid, "subtype": "qemu", "protected": protected}

    listing = [backup(100, 1), backup(100, 2), backup(100, 3, protected=1), backup(101, 1)]
    marks = mark_backup_list(listing, PruneOptions(keep_last=1))
    by_volid = {m["volid"]: m["mark"] for m in marks}
    assert by_volid == {"local:backup/vzdump-qemu-100-3": "protected",
                        "local:backup/vzdump-qemu-100-2": "keep",
                        "local:backup/vzdump-qemu-100-1": "remove",
                        "local:backup/vzdump-qemu-101-1": "keep"}
    assert [m["vmid"] for m in marks] == [100, 100, 100, 101]
    assert {m["mark"] for m in mark_backup_list(listing, PruneOptions(keep_all=True))} == {
        "keep", "protected"}
