"""Which QEMU human monitor (HMP) commands a user may run through
`POST .../qemu/{vmid}/monitor` (qemu-server's `PVE::API2::Qemu::HMPPerms`).

Owns no state: a pure table and its check. PVE's table names each command's
requirement: `none` (help, info), `Sys.Modify` on `/`, or `root` (root@pam only);
a command it does not list is root@pam's, with a warning. binome differs on one
point, for safety: a command that changes what binome itself keeps track of (the
guest's run state, its disks' snapshots and block jobs, its devices, a migration)
is root@pam's even where PVE allows `Sys.Modify`, since binome's records (the
config's snapshot tree, the HA manager's view of a running guest, a disk move's
job) would no longer match the guest; what remains for `Sys.Modify` reads the guest
or sends it input.
"""

from __future__ import annotations

NONE, MODIFY, ROOT = "none", "Sys.Modify", "root"

# PVE's Sys.Modify commands binome keeps for root@pam: they change the run state, the
# block graph, snapshots inside the images or a migration behind binome's records
BINOME_ROOT_ONLY = frozenset({
    "quit", "q", "stop", "s", "cont", "c", "savevm", "loadvm", "delvm",
    "snapshot_blkdev_internal", "snapshot_delete_blkdev_internal", "commit", "eject",
    "block_resize", "block_job_cancel", "block_job_complete", "block_job_pause",
    "block_job_resume", "block_job_set_speed", "backup_cancel", "migrate_cancel",
    "migrate_continue", "migrate_pause", "migrate_set_capability", "migrate_set_parameter",
    "migrate_start_postcopy", "balloon", "system_reset", "system_powerdown",
    "system_wakeup", "set_password", "expire_password", "exit_preconfig", "qemu-io",
    "getfd", "closefd", "replay_break", "replay_delete_break", "replay_seek",
    "x_colo_lost_heartbeat", "ringbuf_write", "boot_set", "set_link", "cpu",
})

_PVE_NONE = ("help", "?", "info")
_PVE_MODIFY = (
    "announce_self", "backup_cancel", "balloon", "block_job_cancel", "block_job_complete",
    "block_job_pause", "block_job_resume", "block_job_set_speed", "block_resize",
    "block_set_io_throttle", "boot_set", "calc_dirty_rate", "cancel_vcpu_dirty_limit",
    "chardev-send-break", "closefd", "commit", "cont", "c", "cpu", "delvm", "eject",
    "exit_preconfig", "expire_password", "getfd", "gva2gpa", "gpa2hpa", "gpa2hva", "i",
    "loadvm", "log", "migrate_cancel", "migrate_continue", "migrate_pause",
    "migrate_set_capability", "migrate_set_parameter", "migrate_start_postcopy",
    "mouse_button", "mouse_move", "mouse_set", "one-insn-per-tb", "print", "p", "qemu-io",
    "qom-get", "qom-list", "quit", "q", "replay_break", "replay_delete_break",
    "replay_seek", "ringbuf_read", "ringbuf_write", "savevm", "sendkey", "set_link",
    "set_password", "set_vcpu_dirty_limit", "snapshot_blkdev_internal",
    "snapshot_delete_blkdev_internal", "stopcapture", "stop", "s", "sum", "sync-profile",
    "system_powerdown", "system_reset", "system_wakeup", "trace-event", "x",
    "x_colo_lost_heartbeat", "xp",
)
_PVE_ROOT = (
    "backup", "block_stream", "change", "chardev-add", "chardev-change", "chardev-remove",
    "client_migrate_info", "device_add", "device_del", "drive_add", "drive_backup",
    "drive_del", "drive_mirror", "dump-guest-memory", "dumpdtb", "gdbserver",
    "hostfwd_add", "hostfwd_remove", "logfile", "mce", "memsave", "migrate",
    "migrate_incoming", "migrate_recover", "nbd_server_add", "nbd_server_remove",
    "nbd_server_start", "nbd_server_stop", "netdev_add", "netdev_del", "nmi", "o",
    "object_add", "object_del", "pcie_aer_inject_error", "pmemsave", "qom-set",
    "savevm-end", "savevm-start", "screendump", "snapshot_blkdev", "watchdog_action",
    "wavcapture", "xen-event-inject", "xen-event-list",
)
COMMAND_PERMS: dict[str, str] = {
    **{c: NONE for c in _PVE_NONE},
    **{c: (ROOT if c in BINOME_ROOT_ONLY else MODIFY) for c in _PVE_MODIFY},
    **{c: ROOT for c in _PVE_ROOT},
}


class MonitorRefused(Exception):
    """The command may not run for this user: PVE's text."""


def command_name(command: str) -> str:
    """The first word of a monitor command line (PVE's `m/^\\s*(\\S+)/`)."""
    words = command.split()
    if not words:
        raise MonitorRefused(f"unexpected command '{command}'")
    return words[0]


def required(command: str) -> str:
    """`none`, `Sys.Modify` (on `/`) or `root` for a command line."""
    return COMMAND_PERMS.get(command_name(command), ROOT)


def check(command: str, userid: str, has_sys_modify: bool) -> None:
    """PVE's checks, in its order and texts; MonitorRefused when refused."""
    name = command_name(command)
    need = COMMAND_PERMS.get(name)
    if need is None:
        if userid != "root@pam":
            raise MonitorRefused(f"command '{name}' non-existent or not assigned a required "
                                 f"permission yet, limiting to root user")
        return
    if need == ROOT and userid != "root@pam":
        raise MonitorRefused(f"root-only command '{name}'")
    if need == MODIFY and not has_sys_modify:
        raise PermissionError("/, Sys.Modify")
