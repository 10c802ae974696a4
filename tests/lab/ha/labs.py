"""The HA lab the scenario tests share: started, the HA guest serving on its replicated
disk and in sync, and always torn down (root only: network namespaces)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from binome.lab.ha import HaLab


def serving_lab(tmp_path_factory, *, base: str, id_prefix: str, dirname: str,
                label: str = "HA lab", **options) -> Iterator[HaLab]:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")
    lab = HaLab(base=base, lab_id=f"{id_prefix}{os.getpid() % 100000:x}"[:8],
                workdir=tmp_path_factory.mktemp(dirname), **options)
    began = time.monotonic()
    lab.start()
    try:
        lab.create_ha_guest()
        print(f"\n{label} with the guest serving and its volume in sync: "
              f"{time.monotonic() - began:.1f} s")
        yield lab
    finally:
        lab.stop()
