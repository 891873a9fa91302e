"""The HTTP server: one aiohttp application around the storage and the sequencer."""
