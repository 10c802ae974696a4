"""NBD: wire codecs (`protocol`), the server (`server`) and an asyncio client (`client`)."""
