"""virtio-blk, a disk backed by a host file (virtio 1.2, section 5.2).

One request queue. Each request is a chain: a 16-byte header the device
reads (le32 type, le32 reserved, le64 sector), the data (read for a write,
written for a read), and one status byte the device writes last. Data moves
between the file and guest RAM with preadv/pwritev straight into the
chain's buffers, on the thread that was notified.

The guest is untrusted: a request outside the disk, of a size that is not a
whole number of sectors, or of an unknown type gets a status (IOERR,
UNSUPP), never an exception; a chain without room for the header or the
status byte breaks the queue's rules, and the device asks for a reset.
"""

from __future__ import annotations

import fcntl  # flock, for the disk image's lock
import os
import stat
import struct
from dataclasses import dataclass

from pyvmm.devices.virtio.backend import ID_BLOCK, VirtioBackend
from pyvmm.devices.virtio.queue import Chain, QueueError, SplitQueue
from pyvmm.errors import UserError

SECTOR = 512  # 5.2.4: capacity and sector numbers count 512-byte sectors
# Feature bits (5.2.3).
F_SEG_MAX = 1 << 2
F_RO = 1 << 5
F_BLK_SIZE = 1 << 6
F_FLUSH = 1 << 9
# Request types and statuses (5.2.6).
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
ID_BYTES = 20  # VIRTIO_BLK_ID_BYTES
QUEUE_SIZE = 256
#: Data buffers one request may have: the queue less the header and status.
SEG_MAX = QUEUE_SIZE - 2
_HEADER = struct.Struct("<IIQ")
# struct virtio_blk_config up to blk_size (5.2.4): capacity, size_max,
# seg_max, geometry (cylinders, heads, sectors), blk_size.
_CONFIG = struct.Struct("<QIIHBBI")


@dataclass(frozen=True)
class DiskConfig:
    """A ``--disk``: the file, whether the guest may write it, its serial."""

    path: str
    readonly: bool = False
    serial: str = ""

    @classmethod
    def parse(cls, text: str) -> DiskConfig:
        """``PATH[,readonly][,serial=S]``."""
        path, *options = text.split(",")
        readonly, serial = False, ""
        for option in options:
            if option in ("readonly", "ro"):
                readonly = True
            elif option.startswith("serial="):
                serial = option.removeprefix("serial=")
                if len(serial.encode()) > ID_BYTES or not serial.isprintable():
                    raise UserError(f"--disk serial {serial!r}: at most 20 printable bytes")
            else:
                raise UserError(f"--disk {text!r}: unknown option {option!r}")
        if not path:
            raise UserError("--disk needs a file: --disk PATH[,readonly][,serial=S]")
        return cls(path, readonly, serial)


def open_disk(disk: DiskConfig) -> tuple[int, int]:
    """The disk's descriptor and size; UserError (one line) when it cannot be
    one. The file is locked as QEMU does it: a writer alone, readers
    together (flock, held until the descriptor is closed)."""
    flags = (os.O_RDONLY if disk.readonly else os.O_RDWR) | os.O_CLOEXEC
    try:
        fd = os.open(disk.path, flags)
    except OSError as e:
        raise UserError(f"--disk {disk.path}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise UserError(f"--disk {disk.path}: not a regular file or block device")
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if disk.readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"--disk {disk.path}: in use by another guest or program "
                "(locked; several may share it only if all open it readonly)"
            ) from None
        size = os.lseek(fd, 0, os.SEEK_END)
        if size % SECTOR:
            raise UserError(
                f"--disk {disk.path}: its size ({size} bytes) is not a multiple of {SECTOR}"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, size


class Block(VirtioBackend):
    """A disk image as a virtio block device."""

    name = "virtio-blk"
    device_id = ID_BLOCK
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self, disk: DiskConfig) -> None:
        self.disk = disk
        self.fd, self.size = open_disk(disk)
        #: For --stats.
        self.requests = self.errors = self.bytes_read = self.bytes_written = 0

    def features(self) -> int:
        return F_SEG_MAX | F_BLK_SIZE | F_FLUSH | (F_RO if self.disk.readonly else 0)

    def config(self) -> bytes:
        return _CONFIG.pack(self.size // SECTOR, 0, SEG_MAX, 0, 0, 0, SECTOR)

    def process(self, queue: SplitQueue) -> None:
        while (chain := queue.pop()) is not None:
            if chain.readable_len < _HEADER.size or chain.writable_len < 1:
                raise QueueError("a block request without its header or status byte")
            kind, _, sector = _HEADER.unpack(chain.read(0, _HEADER.size))
            data = chain.writable_len - 1
            status, written = self._serve(chain, kind, sector, data)
            self.requests += 1
            self.errors += status != S_OK
            if self.kick.note is not None:
                self.kick.note(_describe(kind, sector, chain, status))
            chain.write(bytes([status]), chain.writable_len - 1)
            queue.push(chain.head, written + 1)
            self.kick.interrupt(queue)

    def _serve(self, chain: Chain, kind: int, sector: int, data: int) -> tuple[int, int]:
        """(status, bytes written into the guest's buffers before the status)."""
        if kind == T_IN:
            return self._read(chain, sector, data)
        if kind == T_OUT:
            return self._write(chain, sector, chain.readable_len - _HEADER.size), 0
        if kind == T_FLUSH:
            return self._flush(), 0
        if kind == T_GET_ID:
            ident = (self.disk.serial or "pyvmm").encode()[:ID_BYTES].ljust(ID_BYTES, b"\0")
            return S_OK, chain.write(ident[:data])
        return S_UNSUPP, 0

    def _in_disk(self, sector: int, length: int) -> bool:
        return length % SECTOR == 0 and sector * SECTOR + length <= self.size

    def _read(self, chain: Chain, sector: int, length: int) -> tuple[int, int]:
        if not self._in_disk(sector, length):
            return S_IOERR, 0
        try:
            done = os.preadv(self.fd, chain.writable_views(0, length), sector * SECTOR)
        except OSError:
            return S_IOERR, 0
        if done < length:  # the file shrank under the guest
            return S_IOERR, done
        self.bytes_read += length
        return S_OK, length

    def _write(self, chain: Chain, sector: int, length: int) -> int:
        if self.disk.readonly or not self._in_disk(sector, length):
            return S_IOERR
        try:
            done = os.pwritev(self.fd, chain.readable_views(_HEADER.size, length), sector * SECTOR)
        except OSError:
            return S_IOERR
        self.bytes_written += done
        return S_OK if done == length else S_IOERR

    def _flush(self) -> int:
        if self.disk.readonly:
            return S_OK
        try:
            os.fdatasync(self.fd)
        except OSError:
            return S_IOERR
        return S_OK

    def stats(self) -> str:
        return (
            f"{self.requests} requests ({self.errors} failed), "
            f"{self.bytes_read} bytes read, {self.bytes_written} written"
        )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_NAMES = {T_IN: "read", T_OUT: "write", T_FLUSH: "flush", T_GET_ID: "get id"}
_STATUS = {S_OK: "ok", S_IOERR: "I/O error", S_UNSUPP: "unsupported"}


def _describe(kind: int, sector: int, chain: Chain, status: int) -> str:
    """A request as --trace virtio shows it."""
    name = _NAMES.get(kind, f"type {kind}")
    if kind == T_IN:
        name += f" {chain.writable_len - 1} bytes at sector {sector}"
    elif kind == T_OUT:
        name += f" {chain.readable_len - _HEADER.size} bytes at sector {sector}"
    return f"{name}: {_STATUS[status]}"
