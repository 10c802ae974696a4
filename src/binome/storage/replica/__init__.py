"""The replicated volume engine: DRBD's semantics rebuilt in user space, served over NBD.

Three layers, dependencies pointing one way (node -> engine -> core); see
docs/replicated-volumes.md:

- `core`: pure logic, no I/O (a simulator can drive it): `states` (roles,
  connection and disk states, promotion rules), `uuids` (generation
  identifiers, `uuid_compare`), `splitbrain` (after-sb policies), `handshake`
  (the sync handshake decision, settings compatibility), `rsctl` (the resync
  rate controller), `csum` (block digests), `bitmap` (the dirty bitmap),
  `activity_log` (hot extents), `auth` (HMAC challenge-response), `wire` (peer
  packet codecs), `nbd_protocol` (NBD codecs), `config` (volume settings,
  validated), `handler_rules` (handler names, environment, validation),
  `format` (the /proc/drbd and drbdadm status views), `events` (drbdsetup
  events2 lines), `views` (what the volume records mean: effective disk states);
- `engine`: the engine process, one per node (`python -m binome.storage.replica`
  runs `engine.main`): `process` (one process serving many volumes, its
  commands), `control` (the JSON-lines control socket, server and client),
  `volume.volume` (one volume: state, lifecycle, metadata) with `volume.io_path`
  (the export and write path), `volume.faults` (fencing, local I/O errors),
  `volume.admin` (invalidate, resize, adjust, verify) and `volume.report`
  (status), `volume.errors`; `peer.link` (the link to the peer engine:
  connection, dispatch, loss) with `peer.session` (handshake, P_STATE),
  `peer.replication`, `peer.resync`, `peer.verify` and `peer.common`;
  `peer.transport` (the peer connection's bytes), `completion` (what I/O
  waits on), `nbd_server` (the NBD export), `disk` (the backing file), `meta`
  (the on-disk metadata),
  `handlers` (running handler commands), `config_file` (volume.json);
- `node`: binomed's side: `volumes` (`VolumeService`: engine supervision,
  reconciliation, quorum fencing), `records` (the volume records' etcd keys,
  reads and compare-and-swap writes), `supervisor` (start or re-adopt the
  engine), `errors`.

The NBD client used by tests
and the benchmark is `binome.lab.nbd_client`, off the production path.
"""
