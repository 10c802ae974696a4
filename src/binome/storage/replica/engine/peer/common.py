"""What the link's concern modules share: its size limits and the error that ends it."""

from __future__ import annotations

RS_CHUNK_BITS = 256          # resync request size: 256 blocks (1 MiB at 4 KiB)
RS_WINDOW = 128              # resync requests in flight (scattered blocks: many small ones)
RS_WINDOW_BYTES = 8 << 20    # ... and at most this many bytes
BITMAP_CHUNK = 1 << 20       # bitmap bytes per P_BITMAP packet (before compression)
HANDSHAKE_TIMEOUT = 30.0
BIG_PACKET = 65536           # payloads from this size are sent without joining (no copy)


class Fatal(Exception):
    """Drop the connection and go StandAlone (no automatic reconnect)."""
