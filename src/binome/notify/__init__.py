"""Notifications (PVE 8's targets + matchers model), Prometheus metrics and metric-server push.

Pure parts: events, config, matching, template, metrics formatting. I/O parts: dispatch, senders.
"""
