"""One replicated volume in the engine (`volume.Volume`), split by concern."""
