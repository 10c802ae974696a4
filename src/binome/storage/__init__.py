"""Storage backends; `storage.replica` is the DRBD-like replicated volume engine."""
