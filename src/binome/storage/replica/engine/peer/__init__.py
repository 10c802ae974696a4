"""The link to the peer engine (`link.PeerLink`), split by concern; `transport` moves the bytes."""
