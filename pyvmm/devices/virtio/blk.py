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

import errno
import os
import stat
import struct
from dataclasses import dataclass

from pyvmm.devices.virtio.backend import ID_BLOCK, VirtioBackend
from pyvmm.devices.virtio.queue import Chain, QueueError, SplitQueue
from pyvmm.errors import UserError
from pyvmm.kvm import ffi, lib

SECTOR = 512  # 5.2.4: capacity and sector numbers count 512-byte sectors
# Feature bits (5.2.3).
F_SEG_MAX = 1 << 2
F_RO = 1 << 5
F_BLK_SIZE = 1 << 6
F_FLUSH = 1 << 9
F_DISCARD = 1 << 13
F_WRITE_ZEROES = 1 << 14
# Request types and statuses (5.2.6).
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
ID_BYTES = 20  # VIRTIO_BLK_ID_BYTES
QUEUE_SIZE = 256
#: Data buffers one request may have: the queue less the header and status.
SEG_MAX = QUEUE_SIZE - 2
_HEADER = struct.Struct("<IIQ")
#: Ranges one DISCARD or WRITE_ZEROES request may carry.
RANGES_MAX = 32
#: Sectors one range may cover (1 GiB): a bound on one fallocate call.
RANGE_SECTORS_MAX = (1 << 30) // SECTOR
# struct virtio_blk_config (5.2.4): capacity, size_max, seg_max, geometry
# (cylinders, heads, sectors), blk_size, topology (physical_block_exp,
# alignment_offset, min_io_size, opt_io_size), writeback, unused0,
# num_queues, max_discard_sectors, max_discard_seg,
# discard_sector_alignment, max_write_zeroes_sectors, max_write_zeroes_seg,
# write_zeroes_may_unmap, unused1[3].
_CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")
# struct virtio_blk_discard_write_zeroes: sector, num_sectors, flags.
_RANGE = struct.Struct("<QII")
RANGE_F_UNMAP = 1


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


def open_disk(disk: DiskConfig) -> tuple[int, int, bool]:
    """The disk's descriptor, size and whether it is a regular file (not a
    block device); UserError (one line) when it cannot be
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
        if lib.flock(fd, (lib.LOCK_SH if disk.readonly else lib.LOCK_EX) | lib.LOCK_NB) != 0:
            if ffi.errno != errno.EWOULDBLOCK:
                raise UserError(f"--disk {disk.path}: cannot lock it: {os.strerror(ffi.errno)}")
            raise UserError(
                f"--disk {disk.path}: in use by another guest or program "
                "(locked; several may share it only if all open it readonly)"
            )
        size = os.lseek(fd, 0, os.SEEK_END)
        if size % SECTOR:
            raise UserError(
                f"--disk {disk.path}: its size ({size} bytes) is not a multiple of {SECTOR}"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, size, stat.S_ISREG(mode)


class Block(VirtioBackend):
    """A disk image as a virtio block device."""

    name = "virtio-blk"
    device_id = ID_BLOCK
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self, disk: DiskConfig) -> None:
        self.disk = disk
        self.fd, self.size, self.regular = open_disk(disk)
        #: For --stats.
        self.requests = self.errors = self.bytes_read = self.bytes_written = 0

    def features(self) -> int:
        if self.disk.readonly:
            return F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_RO
        # Holes can be punched in a file, not in a block device.
        holes = F_DISCARD | F_WRITE_ZEROES if self.regular else 0
        return F_SEG_MAX | F_BLK_SIZE | F_FLUSH | holes

    def config(self) -> bytes:
        ranges = (RANGE_SECTORS_MAX, RANGES_MAX, 1) if self.regular else (0, 0, 0)
        return _CONFIG.pack(
            self.size // SECTOR, 0, SEG_MAX, 0, 0, 0, SECTOR,  # capacity .. blk_size
            0, 0, 0, 0, 0, 0, 1,  # topology, writeback, num_queues
            *ranges, *ranges[:2], 1,  # discard, then write zeroes (may unmap)
        )  # fmt: skip

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
        if kind in (T_DISCARD, T_WRITE_ZEROES) and self.regular:
            return self._holes(chain, kind), 0
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

    def _holes(self, chain: Chain, kind: int) -> int:
        """DISCARD and WRITE_ZEROES (5.2.6.2): a hole punched in the file
        reads as zeros, so both punch one; WRITE_ZEROES without the unmap
        flag zeroes the range in place (FALLOC_FL_ZERO_RANGE)."""
        payload = chain.read(_HEADER.size)
        if self.disk.readonly:
            return S_IOERR
        if not payload or len(payload) % _RANGE.size or len(payload) > _RANGE.size * RANGES_MAX:
            return S_UNSUPP
        ranges = [_RANGE.unpack_from(payload, i) for i in range(0, len(payload), _RANGE.size)]
        for sector, count, flags in ranges:
            unmap = bool(flags & RANGE_F_UNMAP)
            if flags & ~RANGE_F_UNMAP or (kind == T_DISCARD and unmap):
                return S_UNSUPP  # 5.2.6.2: a discard with unmap set is unsupported
            if count > RANGE_SECTORS_MAX or not self._in_disk(sector, count * SECTOR):
                return S_IOERR
        for sector, count, flags in ranges:
            if kind == T_WRITE_ZEROES and not flags & RANGE_F_UNMAP:
                mode = lib.FALLOC_FL_ZERO_RANGE | lib.FALLOC_FL_KEEP_SIZE
            else:
                mode = lib.FALLOC_FL_PUNCH_HOLE | lib.FALLOC_FL_KEEP_SIZE
            if lib.fallocate(self.fd, mode, sector * SECTOR, count * SECTOR) != 0:
                zero_range = mode & lib.FALLOC_FL_ZERO_RANGE
                if not (zero_range and ffi.errno == errno.EOPNOTSUPP):
                    return S_IOERR
                if not self._write_zeros(sector * SECTOR, count * SECTOR):
                    return S_IOERR  # and a file system without ZERO_RANGE: by hand
            self.bytes_written += count * SECTOR
        return S_OK

    def _write_zeros(self, offset: int, length: int) -> bool:
        zeros = bytes(min(length, 1 << 20))
        try:
            while length:
                n = os.pwrite(self.fd, zeros[:length], offset)
                offset, length = offset + n, length - n
        except OSError:
            return False
        return True

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


_NAMES = {
    T_IN: "read", T_OUT: "write", T_FLUSH: "flush", T_GET_ID: "get id",
    T_DISCARD: "discard", T_WRITE_ZEROES: "write zeroes",
}  # fmt: skip
_STATUS = {S_OK: "ok", S_IOERR: "I/O error", S_UNSUPP: "unsupported"}


def _describe(kind: int, sector: int, chain: Chain, status: int) -> str:
    """A request as --trace virtio shows it."""
    name = _NAMES.get(kind, f"type {kind}")
    if kind == T_IN:
        name += f" {chain.writable_len - 1} bytes at sector {sector}"
    elif kind == T_OUT:
        name += f" {chain.readable_len - _HEADER.size} bytes at sector {sector}"
    return f"{name}: {_STATUS[status]}"
