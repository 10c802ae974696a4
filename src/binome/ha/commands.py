"""Admin commands queued for the CRM (Proxmox's `crm_commands` lines), parsed and validated.

The API and the CLI append lines to a queue in the store; the master CRM
reads them at the start of its round (`CrmEnv.read_commands`) and deletes them in
the same transaction as its status write:

    migrate <sid> <node>
    relocate <sid> <node>
    enable-node-maintenance <node>
    disable-node-maintenance <node>
    disarm-ha freeze|ignore
    arm-ha
"""

from __future__ import annotations

from dataclasses import dataclass

from binome.ha.model import DisarmMode

VERBS = {
    "migrate": 2, "relocate": 2,
    "enable-node-maintenance": 1, "disable-node-maintenance": 1,
    "disarm-ha": 1, "arm-ha": 0,
}


@dataclass(frozen=True)
class CrmCommand:
    verb: str
    sid: str | None = None
    node: str | None = None
    disarm: DisarmMode | None = None

    def __str__(self) -> str:
        args = [a for a in (self.sid, self.node, self.disarm and str(self.disarm)) if a]
        return " ".join([self.verb, *args])


def parse_command(line: str) -> CrmCommand:
    """Parse one queued line; ValueError with a readable message if malformed."""
    words = line.split()
    if not words or words[0] not in VERBS:
        raise ValueError(f"unknown CRM command: {line!r}")
    verb, args = words[0], words[1:]
    if len(args) != VERBS[verb]:
        raise ValueError(f"{verb}: expected {VERBS[verb]} argument(s), got {len(args)}")
    if verb in ("migrate", "relocate"):
        return CrmCommand(verb, sid=args[0], node=args[1])
    if verb.endswith("node-maintenance"):
        return CrmCommand(verb, node=args[0])
    if verb == "disarm-ha":
        try:
            return CrmCommand(verb, disarm=DisarmMode(args[0]))
        except ValueError:
            raise ValueError("disarm-ha: mode must be freeze or ignore") from None
    return CrmCommand(verb)
