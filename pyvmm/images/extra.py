"""Host files added to an initramfs, for tests that ship their own programs.

Linux unpacks every cpio archive it finds one after another in the initrd
(Documentation/driver-api/early-userspace/buffer-format.rst), so the files
go in a second archive appended to the base one: the base is never rebuilt.
The result is cached by the hash of everything in it.

The same rules as for ``--initrd``: only regular files (a device or a FIFO
would never end), never more than the guest's RAM (checked from the sizes
before anything is read or written), files streamed through in chunks, and
a one-line error for every bad path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pyvmm.images import cpio
from pyvmm.images.cache import cache_dir
from pyvmm.images.debian import ImageError

#: Archives not used for this long are removed when a new one is made.
KEEP_SECONDS = 7 * 24 * 3600
#: Bytes of cpio header and padding an entry can add, at most (110 + a name).
_ENTRY_OVERHEAD = 110 + 4 + 4


@dataclass(frozen=True)
class _File:
    host: Path
    guest: str  # relative to /
    perm: int
    size: int


def guest_path(guest: str) -> str:
    """The path below / a guest path names, or a one-line error."""
    if not isinstance(guest, str) or not guest.startswith("/"):
        raise ImageError(f"extra_files: guest path {guest!r} must be absolute")
    if "\0" in guest or "\n" in guest:
        raise ImageError(f"extra_files: guest path {guest!r} holds a NUL or a newline")
    parts = [p for p in guest.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ImageError(
            f"extra_files: guest path {guest!r} must name a file below /, without '..'"
        )
    return "/".join(parts)


def _plan(files: dict[str | os.PathLike[str], str]) -> list[_File]:
    plan = []
    for host, guest in files.items():
        path = Path(host)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ImageError(f"extra_files: {path}: no such file") from None
        except OSError as e:
            raise ImageError(f"extra_files: {path}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise ImageError(f"extra_files: {path}: is {kind}")
        plan.append(_File(path, guest_path(guest), stat.S_IMODE(st.st_mode), st.st_size))
    return sorted(plan, key=lambda f: f.guest)


def with_files(base: Path, files: dict[str | os.PathLike[str], str], limit: int) -> Path:
    """``base`` with ``files`` appended, made once and cached by content.
    ``limit``: the guest's RAM; a larger result is refused before it is made."""
    plan = _plan(files)
    total = base.stat().st_size + sum(f.size + _ENTRY_OVERHEAD + len(f.guest) for f in plan)
    if total > limit:
        raise ImageError(
            f"extra_files: the initramfs would be {total} bytes, more than the guest's "
            f"{limit >> 20} MiB of RAM"
        )
    folder = cache_dir() / "initramfs-extra"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".building.")
    except OSError as e:
        raise ImageError(f"cannot write to the image cache {folder}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _write(out, base, plan)
        final = folder / f"{digest}.cpio"
        if final.is_file():
            os.unlink(tmp)
            os.utime(final)  # used now: kept from pruning
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
            _prune(folder)
        return final
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ImageError(f"cannot write to the image cache {folder}: {e.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _Hashing:
    """A file object that hashes everything written through it."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return self.out.write(data)


def _write(out: BinaryIO, base: Path, plan: list[_File]) -> str:
    """Base archive, then an archive of the files (with their parent
    directories); the hash of it all."""
    sink = _Hashing(out)
    with open(base, "rb") as f:
        while chunk := f.read(1 << 20):
            sink.write(chunk)
    writer = cpio.Writer(sink)
    dirs: set[str] = set()
    for item in plan:
        parts = item.guest.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in dirs:
                dirs.add(parent)
                writer.add(cpio.directory(parent))
        try:
            with open(item.host, "rb") as f:
                writer.add_stream(item.guest, item.perm, item.size, f.read)
        except ValueError as e:
            raise ImageError(f"extra_files: {e}") from None
        except OSError as e:
            raise ImageError(f"extra_files: {item.host}: {e.strerror}") from None
    writer.finish()
    return sink.hash.hexdigest()[:16]


def _prune(folder: Path) -> None:
    """Remove archives nobody has used for KEEP_SECONDS, and partial ones a
    killed process left (an hour old: nobody is still writing them)."""
    now = time.time()
    for pattern, age in (("*.cpio", KEEP_SECONDS), (".building.*", 3600)):
        for old in folder.glob(pattern):
            with contextlib.suppress(OSError):
                if old.stat().st_mtime < now - age:
                    old.unlink()
