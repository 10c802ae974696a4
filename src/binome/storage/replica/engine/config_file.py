"""A volume's configuration file, `<state>/volumes/<name>/volume.json`: read it, replace it.

The file holds the replication secret, so it is mode 0600; it is replaced
durably (`binome.durable`: temporary file, fsync, rename, fsync of the
directory), so a crash leaves the old or the new settings, never a torn file.
"""

from __future__ import annotations

import json
from pathlib import Path

from binome import durable
from binome.storage.replica.core.config import VolumeConfig


def load_config(path: Path) -> VolumeConfig:
    """The validated configuration stored at `path` (ConfigError if invalid)."""
    return VolumeConfig.from_dict(json.loads(path.read_text()))


def save_config(cfg: VolumeConfig, path: Path) -> None:
    """Replace `path` with `cfg` (0600: it holds the secret)."""
    durable.write_text(path, cfg.to_json(), mode=0o600)
