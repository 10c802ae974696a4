"""Structured log lines (logfmt): `ts=... level=... component=... msg="..." key=value`.

binomed writes them to stderr (the journal, under systemd) and to its own rotated file,
`<state>/log/binomed.log` (`binome.daemon.logs` serves it as `/nodes/{node}/syslog`).
"""

from __future__ import annotations

import logging
import logging.handlers
import time
from pathlib import Path

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\t\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        parts = [f"ts={ts}.{int(record.msecs):03d}", f"level={record.levelname.lower()}",
                 f"node={self.node}", f"component={record.name.removeprefix('binome.')}",
                 f"msg={_quote(record.getMessage())}"]
        parts += [f"{k}={_quote(v)}" for k, v in vars(record).items() if k not in _STD]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


# the file's size bound: LOG_FILE_BYTES per file, LOG_FILE_KEPT rotated files
LOG_FILE_BYTES = 4 << 20
LOG_FILE_KEPT = 3


def setup(node: str, level: str = "info", log_file: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handlers.append(logging.handlers.RotatingFileHandler(
            log_file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_KEPT))
    for handler in handlers:
        handler.setFormatter(LogfmtFormatter(node))
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
