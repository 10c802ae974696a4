"""The replicated volume engine: DRBD's semantics rebuilt in user space, served over NBD.

Layout (see docs/replicated-volumes.md):

- pure logic, no I/O (a simulator can drive it): `states` (roles, connection and
  disk states), `uuids` (generation identifiers and `uuid_compare`), `splitbrain`
  (after-sb policies), `handshake` (the sync handshake decision), `bitmap` (the
  dirty bitmap), `activity_log` (hot extents), `nbd.protocol` (wire codecs);
- I/O: `meta` (the on-disk metadata file), `disk` (the backing file), `volume`
  (one volume: disk + metadata + state + write path), `nbd.server` (the NBD
  export), `control` (the engine's JSON-lines control socket), `engine` (one
  process serving many volumes), `supervisor` (start or re-adopt the engine).
"""
