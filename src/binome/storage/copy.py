"""A copy of one disk image volume to a new volume of a given name, on this node, through
the storage interface (PVE's `POST /nodes/{node}/storage/{storage}/content/{volume}`,
its `storage_migrate` to a `target_volname`).

Owns no state: the target is allocated with the source's size by its storage (any type),
both volumes are activated here, `qemu-img convert -n` writes the data, and a failed copy
frees the target it made.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from binome.storage.base import (
    Storage,
    StorageError,
    convert_into,
    parse_image_volname,
    split_volid,
)


async def copy_volume(src: Storage, src_volid: str, dst: Storage, dst_volid: str,
                      log: Callable[[str], None] = lambda _m: None) -> str:
    """Copy `src_volid` to the new volume `dst_volid` (`STORAGE:VMID/vm-VMID-disk-N.FMT`);
    returns its volid. StorageError when it cannot be done; nothing is left behind."""
    _, dst_volname = split_volid(dst_volid)
    vmid, name, fmt = parse_image_volname(dst_volname)
    parse_image_volname(split_volid(src_volid)[1])       # disk images only
    if fmt not in dst.formats:
        raise StorageError(f"unsupported format '{fmt}' on storage '{dst.id}'")
    size = await src.size(src_volid)
    made = await dst.alloc(vmid, size, fmt, name)
    src_active = dst_active = False
    try:
        src_active = await src.activate_volume(src_volid)
        dst_active = await dst.activate_volume(made)
        a, b = src.source(src_volid), dst.source(made)
        log(f"copy {src_volid} ({size} bytes) to {made}")
        try:
            await convert_into(a, b)
        except StorageError as exc:
            raise StorageError(f"copy failed: {exc}") from None
    except BaseException:
        if dst_active:
            with contextlib.suppress(Exception):
                await dst.deactivate_volume(made)
            dst_active = False
        with contextlib.suppress(Exception):
            await dst.free(made)
        raise
    finally:
        for active, storage, volid in ((src_active, src, src_volid), (dst_active, dst, made)):
            if active:
                with contextlib.suppress(Exception):
                    await storage.deactivate_volume(volid)
    log(f"copied {src_volid} to {made}")
    return made
