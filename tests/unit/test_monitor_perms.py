"""Who may run which QEMU monitor command (`binome.guest.monitor`): PVE's table, and
binome's stricter rule for commands that change what binome keeps records of."""

from __future__ import annotations

import pytest

from binome.guest.monitor import BINOME_ROOT_ONLY, COMMAND_PERMS, MonitorRefused, check, required


def test_reading_commands_need_nothing_more() -> None:
    for line in ("info status", "  info block", "help", "? info"):
        assert required(line) == "none"
        check(line, "someone@pve", has_sys_modify=False)


def test_sys_modify_commands() -> None:
    assert required("sendkey ctrl-alt-delete") == "Sys.Modify"
    check("sendkey ret", "admin@pve", has_sys_modify=True)
    with pytest.raises(PermissionError, match=r"Sys\.Modify"):
        check("sendkey ret", "audit@pve", has_sys_modify=False)


def test_state_changing_commands_are_root_only_in_binome() -> None:
    for name in ("quit", "stop", "cont", "savevm", "loadvm", "delvm", "system_reset",
                 "block_job_cancel", "migrate_cancel", "balloon"):
        assert COMMAND_PERMS[name] == "root" and name in BINOME_ROOT_ONLY
        with pytest.raises(MonitorRefused, match=f"root-only command '{name}'"):
            check(f"{name} x", "admin@pve", has_sys_modify=True)
        check(f"{name} x", "root@pam", has_sys_modify=False)
    # a root token is not root@pam (PVE compares the user id)
    with pytest.raises(MonitorRefused):
        check("quit", "root@pam!automation", has_sys_modify=True)


def test_unknown_and_empty_commands() -> None:
    with pytest.raises(MonitorRefused, match="root-only command 'drive_add'"):
        check("drive_add 0 file=/etc/shadow", "admin@pve", has_sys_modify=True)
    check("drive_add 0 if=none", "root@pam", has_sys_modify=False)
    with pytest.raises(MonitorRefused, match="command 'frob' non-existent or not "
                                             "assigned a required permission yet"):
        check("frob", "admin@pve", has_sys_modify=True)
    check("frob", "root@pam", has_sys_modify=False)
    with pytest.raises(MonitorRefused, match="unexpected command"):
        check("   ", "root@pam", has_sys_modify=True)
