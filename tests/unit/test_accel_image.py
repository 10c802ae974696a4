"""The KVM probe (`binome.guest.accel`) finds the lab guest image `binome.lab.image` builds.

The guest package does not import the lab: these tests pin the layout they share (the
build cache root and the image's stamp, kernel and initramfs).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from binome.guest import accel
from binome.lab import image

pytestmark = pytest.mark.unit


def test_probe_looks_where_the_lab_builds(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    assert accel._image_dir() == image.default_cache_dir() / "guest"
    monkeypatch.setenv("BINOME_CACHE_DIR", str(tmp_path))
    assert accel._image_dir() == image.default_cache_dir() / "guest" == tmp_path / "guest"


def test_probe_uses_a_built_image_only(tmp_path: Path) -> None:
    assert accel._built_image(tmp_path) is None
    (tmp_path / "stamp.json").write_text('{"kernel_file": "vmlinux"}')
    (tmp_path / "vmlinux").write_bytes(b"k")
    assert accel._built_image(tmp_path) is None   # no initramfs yet: not built
    (tmp_path / "initrd.gz").write_bytes(b"i")
    assert accel._built_image(tmp_path) == (tmp_path / "vmlinux", tmp_path / "initrd.gz")


def test_the_built_image_of_this_tree_is_found_as_the_lab_sees_it() -> None:
    cached = image._load_cached(image.DEFAULT_CACHE_DIR / "guest")
    if cached is None:
        pytest.skip("no guest image built in this tree (make image)")
    assert accel._built_image(accel._image_dir()) == (cached.kernel, cached.initrd)
