"""Writing "newc" cpio archives, the format Linux unpacks as an initramfs.

Format: Documentation/driver-api/early-userspace/buffer-format.rst. Each
entry is a 110-byte ASCII header ("070701" and thirteen 8-digit hex fields),
the NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes.
The archive ends with an entry named "TRAILER!!!". Timestamps are 0 and inode
numbers sequential, so the same input always gives the same bytes.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One file, directory, symlink or device node in the archive."""

    name: str  # path without a leading "/"
    mode: int  # type bits and permissions, as in st_mode
    data: bytes = b""  # file contents, or a symlink's target
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | perm)


def file(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, name: bytes, size: int | None = None) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    size = len(entry.data) if size is None else size
    fields = (
        ino, entry.mode, 0, 0, nlink, 0, size,
        0, 0, entry.rdev[0], entry.rdev[1], len(name) + 1, 0,
    )  # fmt: skip
    return MAGIC + b"".join(b"%08x" % f for f in fields)


#: Largest file a newc header can describe (an 8-digit hex size).
MAX_FILE_SIZE = 0xFFFFFFFF


class Output(Protocol):
    def write(self, data: bytes, /) -> int: ...


class Writer:
    """Writes an archive to ``out`` entry by entry, so large files stream
    through in chunks instead of being held in memory."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self._ino = 0

    def _start(self, entry: Entry, size: int) -> None:
        self._ino += 1
        name = entry.name.lstrip("/").encode()
        header = _header(0 if entry.name == TRAILER else self._ino, entry, name, size)
        self.out.write(header + name + b"\0" + _pad4(len(header) + len(name) + 1))

    def add(self, entry: Entry) -> None:
        self._start(entry, len(entry.data))
        self.out.write(entry.data + _pad4(len(entry.data)))

    def add_stream(self, name: str, perm: int, size: int, read: Callable[[int], bytes]) -> None:
        """A regular file of exactly ``size`` bytes, taken from ``read(n)``;
        raises ValueError if it gives fewer (the file shrank meanwhile)."""
        if size > MAX_FILE_SIZE:
            raise ValueError(f"{name}: a cpio archive holds files of up to 4 GiB")
        self._start(Entry(name, stat.S_IFREG | perm), size)
        left = size
        while left:
            chunk = read(min(left, 1 << 20))
            if not chunk:
                raise ValueError(f"{name}: the file became shorter while it was read")
            self.out.write(chunk)
            left -= len(chunk)
        self.out.write(_pad4(size))

    def finish(self) -> None:
        self.add(Entry(TRAILER, 0))


def archive(entries: list[Entry]) -> bytes:
    """The uncompressed newc archive of ``entries``, in order, plus the trailer."""
    out = bytearray()
    for ino, entry in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        name = entry.name.lstrip("/").encode()
        header = _header(0 if entry.name == TRAILER else ino, entry, name)
        out += header + name + b"\0"
        out += _pad4(len(header) + len(name) + 1)
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)
