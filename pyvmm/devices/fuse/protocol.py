"""The FUSE wire format as virtio-fs carries it.

Every request starts with ``fuse_in_header`` and every reply with
``fuse_out_header``; the structures after them depend on the opcode. Layouts,
opcodes and flags are those of Linux's ``include/uapi/linux/fuse.h``
(protocol 7.31, which Linux 5.4 and later speak); all integers are
little-endian on x86. A request is untrusted: :func:`unpack` and
:func:`names` raise :class:`BadRequest` for anything short or malformed,
and the server answers it with EINVAL or EIO instead of crashing.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

#: The protocol version pyvmm speaks (fuse.h, FUSE_KERNEL_VERSION/MINOR).
MAJOR = 7
MINOR = 31
#: The node ID of the share's root (FUSE_ROOT_ID).
ROOT_ID = 1

# Opcodes (enum fuse_opcode).
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK = 8, 9, 10, 11, 12, 13
OPEN, READ, WRITE, STATFS, RELEASE, FSYNC = 14, 15, 16, 17, 18, 20
SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, FLUSH, INIT = 21, 22, 23, 24, 25, 26
OPENDIR, READDIR, RELEASEDIR, FSYNCDIR, ACCESS, CREATE = 27, 28, 29, 30, 34, 35
INTERRUPT, DESTROY, BATCH_FORGET, FALLOCATE, RENAME2, LSEEK = 36, 38, 42, 43, 45, 46
SYNCFS = 50

#: Names for traces.
OPCODE_NAMES = {
    value: name
    for name, value in globals().items()
    if name.isupper() and isinstance(value, int) and name not in ("MAJOR", "MINOR", "ROOT_ID")
}

# fuse_init_out.flags pyvmm may set (FUSE_ASYNC_READ, FUSE_BIG_WRITES,
# FUSE_PARALLEL_DIROPS): reads may be in flight together, writes larger
# than a page, lookups in one directory in parallel.
INIT_ASYNC_READ = 1 << 0
INIT_BIG_WRITES = 1 << 5
INIT_PARALLEL_DIROPS = 1 << 18

# fuse_setattr_in.valid bits (FATTR_*).
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1, 2, 4, 8
FATTR_ATIME, FATTR_MTIME, FATTR_FH = 16, 32, 64
FATTR_ATIME_NOW, FATTR_MTIME_NOW = 128, 256

#: RENAME_NOREPLACE and RENAME_EXCHANGE (renameat2(2)).
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
#: fuse_getattr_in.getattr_flags: fh is valid (FUSE_GETATTR_FH).
GETATTR_FH = 1

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags
# major minor max_readahead flags max_background congestion_threshold
# max_write time_gran max_pages map_alignment flags2 unused[7]
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
# ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode
# nlink uid gid rdev blksize flags
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid nsecs; then ATTR
ATTR_OUT = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy; then ATTR
GETATTR_IN = struct.Struct("<IIQ")  # getattr_flags dummy fh
# valid padding fh size lock_owner atime mtime ctime atimensec mtimensec
# ctimensec mode unused4 uid gid unused5
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
FORGET_IN = struct.Struct("<Q")  # nlookup
BATCH_FORGET_IN = struct.Struct("<II")  # count dummy
FORGET_ONE = struct.Struct("<QQ")  # nodeid nlookup
MKNOD_IN = struct.Struct("<IIII")  # mode rdev umask padding; then name
MKDIR_IN = struct.Struct("<II")  # mode umask; then name
RENAME_IN = struct.Struct("<Q")  # newdir; then oldname, newname
RENAME2_IN = struct.Struct("<QII")  # newdir flags padding; then names
LINK_IN = struct.Struct("<Q")  # oldnodeid; then newname
OPEN_IN = struct.Struct("<II")  # flags open_flags
OPEN_OUT = struct.Struct("<QII")  # fh open_flags padding
CREATE_IN = struct.Struct("<IIII")  # flags mode umask open_flags; then name
READ_IN = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags padding
WRITE_IN = struct.Struct("<QQIIQII")  # fh offset size write_flags lock_owner flags padding
WRITE_OUT = struct.Struct("<II")  # size padding
RELEASE_IN = struct.Struct("<QIIQ")  # fh flags release_flags lock_owner
FLUSH_IN = struct.Struct("<QIIQ")  # fh unused padding lock_owner
FSYNC_IN = struct.Struct("<QII")  # fh fsync_flags padding
ACCESS_IN = struct.Struct("<II")  # mask padding
# blocks bfree bavail files ffree bsize namelen frsize padding spare[6]
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
DIRENT = struct.Struct("<QQII")  # ino off namelen type; then the name, padded to 8
FALLOCATE_IN = struct.Struct("<QQQII")  # fh offset length mode padding
LSEEK_IN = struct.Struct("<QQII")  # fh offset whence padding
LSEEK_OUT = struct.Struct("<Q")

#: Longest name in a directory (NAME_MAX).
NAME_MAX = 255


class BadRequest(Exception):
    """A request too short or malformed to serve."""


@dataclass(frozen=True)
class Request:
    """One request: its header fields and the bytes after the header."""

    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    body: bytes

    @classmethod
    def parse(cls, data: bytes) -> Request:
        if len(data) < IN_HEADER.size:
            raise BadRequest(f"{len(data)} bytes: shorter than a request header")
        length, opcode, unique, nodeid, uid, gid, pid, _, _ = IN_HEADER.unpack_from(data)
        if length < IN_HEADER.size or length > len(data):
            raise BadRequest(f"header says {length} bytes, {len(data)} came")
        return cls(opcode, unique, nodeid, uid, gid, pid, data[IN_HEADER.size : length])


def unpack(layout: struct.Struct, body: bytes) -> tuple[int, ...]:
    """The fixed part of a request body."""
    if len(body) < layout.size:
        raise BadRequest(f"{len(body)} bytes where {layout.size} were due")
    return layout.unpack_from(body)


def names(body: bytes, offset: int, count: int) -> list[bytes]:
    """``count`` NUL-terminated strings from ``offset``."""
    out = []
    for _ in range(count):
        end = body.find(b"\0", offset)
        if end < 0:
            raise BadRequest("a name without its terminating NUL")
        out.append(body[offset:end])
        offset = end + 1
    return out


def reply(unique: int, error: int = 0, payload: bytes = b"") -> bytes:
    """A reply: ``error`` is a positive errno (sent negated, as fuse.h has it)."""
    return OUT_HEADER.pack(OUT_HEADER.size + len(payload), -error, unique) + payload


def attr(st: os.stat_result) -> bytes:
    """``struct fuse_attr`` from a host stat."""
    return ATTR.pack(
        st.st_ino,
        st.st_size,
        st.st_blocks,
        int(st.st_atime_ns // 1_000_000_000),
        int(st.st_mtime_ns // 1_000_000_000),
        int(st.st_ctime_ns // 1_000_000_000),
        int(st.st_atime_ns % 1_000_000_000),
        int(st.st_mtime_ns % 1_000_000_000),
        int(st.st_ctime_ns % 1_000_000_000),
        st.st_mode,
        min(st.st_nlink, 0xFFFFFFFF),
        st.st_uid,
        st.st_gid,
        _rdev32(st.st_rdev),
        st.st_blksize,
        0,
    )


def _rdev32(rdev: int) -> int:
    """A device number as the kernel's 32-bit encoding (new_encode_dev)."""
    major, minor = os.major(rdev), os.minor(rdev)
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFFFFFF


def dirent(ino: int, offset: int, name: bytes, mode: int) -> bytes:
    """One ``struct fuse_dirent``, padded to 8 bytes; ``offset`` is where the
    next read continues."""
    kind = stat.S_IFMT(mode) >> 12  # DT_* are the S_IFMT bits shifted down
    raw = DIRENT.pack(ino, offset, len(name), kind) + name
    return raw + b"\0" * (-len(raw) % 8)
