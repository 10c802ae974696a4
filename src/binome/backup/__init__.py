"""Backups: retention (prune), schedules (calendar events) and the deduplicated chunk store.

Foundations for issue 13; the API, CLI and daemon wiring is done elsewhere.
"""
