"""Unit tests of the replicated volume engine's pure logic."""
