"""The replicated volume engine's pure logic: no I/O, no asyncio (a simulator can drive it)."""
