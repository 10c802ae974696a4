"""The base of every error whose message is meant for the administrator.

Such errors end a task with `TASK ERROR: <message>` or an API call with a 500
whose reason phrase is the message, without a traceback in the daemon's log:
they are outcomes, not bugs.
"""


class BinomeError(RuntimeError):
    """An expected failure with an administrator-facing one-line message."""
