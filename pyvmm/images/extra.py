"""Host files added to an initramfs, for tests that ship their own programs.

Linux unpacks every cpio archive it finds one after another in the initrd
(Documentation/driver-api/early-userspace/buffer-format.rst), so the files
go in a second, small archive appended to the base one: the base is never
rebuilt. The result is cached by the hash of everything in it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path, PurePosixPath

from pyvmm.images import cpio
from pyvmm.images.cache import cache_dir, write_atomic
from pyvmm.images.debian import ImageError


def entries(files: dict[str | os.PathLike[str], str]) -> list[cpio.Entry]:
    """cpio entries for host file -> absolute guest path, with the parent
    directories each needs; permission bits come from the host file."""
    items: list[cpio.Entry] = []
    dirs: set[str] = set()
    for host, guest in sorted(files.items(), key=lambda kv: kv[1]):
        path = PurePosixPath(guest)
        if not path.is_absolute() or ".." in path.parts or path == PurePosixPath("/"):
            raise ImageError(f"guest path {guest!r} must be absolute, below /, without '..'")
        try:
            data = Path(host).read_bytes()
            mode = stat.S_IMODE(os.stat(host).st_mode)
        except OSError as e:
            raise ImageError(f"cannot read {host}: {e.strerror}") from None
        rel = path.relative_to("/")
        for parent in reversed(rel.parents[:-1]):
            if str(parent) not in dirs:
                dirs.add(str(parent))
                items.append(cpio.directory(str(parent)))
        items.append(cpio.file(str(rel), data, mode))
    return items


def with_files(base: Path, files: dict[str | os.PathLike[str], str]) -> Path:
    """``base`` with ``files`` appended, built once and cached by content."""
    extra = cpio.archive(entries(files))
    base_data = base.read_bytes()
    digest = hashlib.sha256(base_data + b"\0" + extra).hexdigest()[:16]
    path = cache_dir() / "initramfs-extra" / f"{digest}.cpio"
    if not path.is_file():
        write_atomic(path, base_data + extra)
    return path
