"""The replicated volume engine: DRBD's semantics rebuilt in user space, served over NBD.

Layout (see docs/replicated-volumes.md):

- pure logic, no I/O (a simulator can drive it): `states` (roles, connection and
  disk states, promotion rules), `uuids` (generation identifiers and
  `uuid_compare`), `splitbrain` (after-sb policies), `handshake` (the sync
  handshake decision, settings compatibility), `bitmap` (the dirty bitmap),
  `activity_log` (hot extents), `auth` (HMAC challenge-response), `wire` (peer
  packet codecs), `nbd.protocol` (NBD codecs);
- I/O: `config` (volume settings, validated, stored as JSON), `meta` (the
  on-disk metadata file), `disk` (the backing file), `volume`
  (one volume: disk + metadata + state + write path), `peer` (the link to the
  peer engine: handshake, replication, resync), `nbd.server` (the NBD export),
  `nbd.client` (an asyncio NBD client), `control` (the engine's JSON-lines
  control socket), `engine` (one process serving many volumes), `supervisor`
  (start or re-adopt the engine), `__main__` (the engine's entry point),
  `link` (the peer connection's transport);
- the daemon's side (runs in `binomed`, not in the engine): `service`
  (supervision, etcd records and reconciliation, quorum fencing), `keys` (its
  etcd keys), `format` (the /proc/drbd and drbdadm status views, pure).
"""
