"""The local backing store of a volume: a regular file (sparse) or a block device.

Reads and writes are positional (`os.preadv`/`os.pwrite`) on one shared file
descriptor, through the page cache, and run inline on the event loop: for
page-cache I/O a thread hand-off costs more than the copy itself (measured,
see docs/replicated-volumes.md). What can block for long runs in the default
thread pool: `fdatasync` (FLUSH and FUA) and discards of large ranges.

Flushes are coalesced: a flush requested while another runs waits for the
*next* fdatasync (the running one may have started before the writes the new
request must cover), and every request that arrives meanwhile shares it.

TRIM and WRITE_ZEROES punch holes (`fallocate(PUNCH_HOLE)`), so a trimmed
range reads back as zeroes on both replicas; NO_HOLE uses ZERO_RANGE.

Errors of the backing store (EIO from the kernel: on reads, and for page-cache
writes at the fdatasync) are raised as OSError, unchanged: the volume decides
what a failure means (`Volume.local_io_error`, DRBD's on-io-error detach).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import stat

from binome.storage.replica.core.nbd_protocol import STATE_HOLE, STATE_ZERO

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
_ZERO_CHUNK = 1024 * 1024

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class LocalDisk:
    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self.fd = -1
        self.is_block = False
        self._flush_running = False
        self._next_flush: asyncio.Future | None = None
        self.zero_range_ok = True       # fallocate(ZERO_RANGE) works here
        self.punch_hole_ok = True       # fallocate(PUNCH_HOLE) works here

    @property
    def flushing(self) -> bool:
        """An fdatasync runs in a thread (the descriptor must stay open until it ends)."""
        return self._flush_running

    def open(self, *, create: bool = False) -> None:
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            st = os.fstat(fd)
            self.is_block = stat.S_ISBLK(st.st_mode)
            actual = os.lseek(fd, 0, os.SEEK_END) if self.is_block else st.st_size
            if actual < self.size:
                if self.is_block or not create:
                    raise OSError(errno.ENOSPC, f"{self.path}: {actual} bytes, the volume "
                                                f"needs {self.size}")
                os.ftruncate(fd, self.size)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # --- data path (inline) ---------------------------------------------------------------

    def read_into(self, offset: int, view: memoryview) -> None:
        n = os.preadv(self.fd, [view], offset)
        while n < len(view):
            got = os.preadv(self.fd, [view[n:]], offset + n)
            if got == 0:      # past the end of a short file: the rest reads as zeroes
                view[n:] = bytes(len(view) - n)
                return
            n += got

    def write(self, offset: int, data: memoryview | bytes) -> None:
        n = os.pwrite(self.fd, data, offset)
        while n < len(data):
            n += os.pwrite(self.fd, memoryview(data)[n:], offset + n)

    def discard(self, offset: int, length: int, *, keep_allocated: bool, fast: bool) -> None:
        """Make a range read as zeroes: punch a hole, or zero it in place (NO_HOLE)."""
        if length == 0:
            return
        if keep_allocated:
            if self.zero_range_ok:
                try:
                    fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)
                    return
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        raise
                    self.zero_range_ok = False
            if fast:
                raise OSError(errno.ENOTSUP, "zeroing this range is not fast")
            self._write_zeroes(offset, length)
            return
        try:
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            self.punch_hole_ok = False
            if fast:
                raise OSError(errno.ENOTSUP, "zeroing this range is not fast") from None
            self._write_zeroes(offset, length)

    def _write_zeroes(self, offset: int, length: int) -> None:
        zeros = bytes(min(length, _ZERO_CHUNK))
        end = offset + length
        while offset < end:
            n = min(len(zeros), end - offset)
            self.write(offset, memoryview(zeros)[:n])
            offset += n

    def block_status(self, offset: int, length: int, *,
                     max_extents: int = 512) -> list[tuple[int, int]]:
        """base:allocation extents (length, flags) from SEEK_DATA/SEEK_HOLE."""
        end = min(offset + length, self.size)
        extents: list[tuple[int, int]] = []
        pos = offset
        while pos < end and len(extents) < max_extents:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:       # only a hole until the end of the file
                    data = end
                elif e.errno == errno.EINVAL:    # no SEEK_DATA here: report allocated
                    extents.append((end - pos, 0))
                    break
                else:
                    raise
            if data > pos:
                stop = min(data, end)
                extents.append((stop - pos, STATE_HOLE | STATE_ZERO))
                pos = stop
                continue
            hole = min(os.lseek(self.fd, pos, os.SEEK_HOLE), end)
            extents.append((hole - pos, 0))
            pos = hole
        # Extent lengths are 32-bit on the wire.
        out: list[tuple[int, int]] = []
        for ln, fl in extents:
            while ln > 0:
                piece = min(ln, 0x80000000)
                out.append((piece, fl))
                ln -= piece
        return out

    # --- durability -----------------------------------------------------------------------

    def flush(self) -> asyncio.Future:
        """fdatasync in a thread; concurrent requests share the next one."""
        loop = asyncio.get_running_loop()
        if self._flush_running:
            if self._next_flush is None:
                self._next_flush = loop.create_future()
            return self._next_flush
        fut = loop.create_future()
        self._start_flush(loop, fut)
        return fut

    def _start_flush(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future) -> None:
        self._flush_running = True
        job = loop.run_in_executor(None, os.fdatasync, self.fd)

        def finished(job: asyncio.Future) -> None:
            self._flush_running = False
            exc = job.exception()
            if not fut.done():
                fut.set_exception(exc) if exc else fut.set_result(None)
            nxt, self._next_flush = self._next_flush, None
            if nxt is not None:
                self._start_flush(loop, nxt)

        job.add_done_callback(finished)
