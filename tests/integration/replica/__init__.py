"""Integration tests of the volume engine: real engine processes, real NBD clients."""
