"""A snapshot on disk: a directory written whole or not at all.

    DIR/state.json     the state (pyvmm.snapshot.format), JSON
    DIR/state.sha256   SHA-256 of state.json, hex: damage is refused
    DIR/memory         guest RAM at offset = guest-physical address; a
                       sparse file: pages that were never written are holes

Everything is written into a temporary directory next to DIR, flushed to
disk, and renamed to DIR last, so a crash or a full disk never leaves
something that looks like a snapshot. A restored guest maps ``memory``
privately: its pages are read only when the guest touches them, and what
the guest writes stays its own, so clones of one snapshot share it.
"""

from __future__ import annotations

import array
import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from pyvmm.arch.x86_64 import layout
from pyvmm.memory import PAGE_SIZE, GuestMemory
from pyvmm.snapshot.format import Snapshot, SnapshotError, decode, encode

STATE = "state.json"
CHECKSUM = "state.sha256"
MEMORY = "memory"
#: Guest RAM is compared with zeros and written in chunks of this size.
CHUNK = 64 * 1024
#: Most bytes one copy between memory files moves (a bound on the buffer).
COPY_CHUNK = 16 << 20
_ZERO = bytes(CHUNK)
#: A state file larger than this is refused unread (a few vCPUs' state is KiB).
MAX_STATE = 64 << 20


#: /proc/self/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst):
#: the page is present, swapped out, or a file page (not a private copy).
PM_PRESENT = 1 << 63
PM_SWAPPED = 1 << 62
PM_FILE = 1 << 61
_PAGES = CHUNK // PAGE_SIZE


def _page_flags(host_addr: int, size: int) -> array.array[int]:
    """The pagemap entry of each page of [host_addr, host_addr+size)."""
    entries = array.array("Q")
    with open("/proc/self/pagemap", "rb", buffering=0) as f:
        f.seek(host_addr // PAGE_SIZE * 8)
        entries.frombytes(f.read(size // PAGE_SIZE * 8))
    return entries


def _copy_data(src: int, dst: int, size: int) -> None:
    """Copy the data extents of ``src`` into ``dst`` at the same offsets;
    its holes stay holes (SEEK_DATA/SEEK_HOLE)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after offset
            return
        end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        while start < end:
            n = _copy_range(src, dst, min(end - start, COPY_CHUNK), start)
            if n == 0:  # the file ended early (truncated meanwhile)
                return
            start += n
        offset = end


def _copy_range(src: int, dst: int, count: int, offset: int) -> int:
    """Copy up to ``count`` bytes at ``offset``: in the kernel where it can
    (copy_file_range), through a buffer between two file systems (EXDEV:
    Linux 5.19 and later copy only within one kind of file system)."""
    try:
        return os.copy_file_range(src, dst, count, offset, offset)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    data = os.pread(src, count, offset)
    return os.pwrite(dst, data, offset) if data else 0


def write_memory(memory: GuestMemory, fd: int, base: Path | None = None) -> int:
    """Guest RAM into the file ``fd`` at offset = guest address. Only pages
    that were ever written are looked at: the rest read as zero, or, for a
    guest restored from ``base`` (a memory file it maps privately), as
    ``base`` has them, so its data is copied first. Chunks that are all
    zero stay holes. Returns bytes written from guest RAM."""
    written = 0
    end = max(r.end for r in memory.ranges)
    os.ftruncate(fd, end)
    if base is not None:
        src = os.open(base, os.O_RDONLY)
        try:
            _copy_data(src, fd, end)
        finally:
            os.close(src)
    hosts = {gpa: host for _, gpa, _, host in memory.slots()}
    for _, r, view in memory.regions():
        flags = _page_flags(hosts[r.start], r.size)
        for page in range(0, len(flags), _PAGES):
            # A page that is a private copy (written since), or swapped out.
            own = [
                e
                for e in flags[page : page + _PAGES]
                if e & PM_SWAPPED or (e & PM_PRESENT and not e & PM_FILE)
            ]
            if not own:
                continue
            off = page * PAGE_SIZE
            chunk = view[off : off + CHUNK]
            if base is not None or chunk != _ZERO[: len(chunk)]:
                written += os.pwrite(fd, chunk, r.start + off)
    return written


def save(path: Path, snap: Snapshot, memory: GuestMemory, base: Path | None = None) -> int:
    """Write the snapshot to ``path``, which must not exist yet; returns
    the bytes of guest memory written. ``base``: the memory file a restored
    guest maps. On any failure nothing is left."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise SnapshotError(f"snapshot {path}: already exists")
    parent = path.parent
    try:
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.saving."))
    except OSError as e:
        raise SnapshotError(f"snapshot {path}: cannot write in {parent}: {e.strerror}") from None
    try:
        state = encode(snap)
        fd = os.open(tmp / MEMORY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            written = write_memory(memory, fd, base)
            os.fsync(fd)
        finally:
            os.close(fd)
        for name, data in ((STATE, state), (CHECKSUM, hashlib.sha256(state).hexdigest().encode())):
            with open(os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o700)  # guest memory may hold secrets: the owner's only
        os.rename(tmp, path)
        dir_fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return written
    except OSError as e:
        raise SnapshotError(f"snapshot {path}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load(path: Path) -> Snapshot:
    """Read and check a snapshot's state; SnapshotError says what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise SnapshotError(f"snapshot {path}: no such directory")
    try:
        with open(path / STATE, "rb") as f:
            state = f.read(MAX_STATE + 1)
        checksum = (path / CHECKSUM).read_bytes().strip()
        size = (path / MEMORY).stat().st_size
    except FileNotFoundError as e:
        raise SnapshotError(f"snapshot {path}: {Path(str(e.filename)).name} is missing") from None
    except OSError as e:
        raise SnapshotError(f"snapshot {path}: {e.strerror}") from None
    if len(state) > MAX_STATE:
        raise SnapshotError(f"snapshot {path}: the state file is too large")
    if hashlib.sha256(state).hexdigest().encode() != checksum:
        raise SnapshotError(f"snapshot {path}: the state file does not match its checksum")
    try:
        snap = decode(state)
    except SnapshotError as e:
        raise SnapshotError(f"snapshot {path}: {e}") from None
    needed = max(r.end for r in layout.ram_ranges(snap.config.memory))
    if size < needed:
        raise SnapshotError(f"snapshot {path}: the memory file is truncated")
    return snap


def open_memory(path: Path) -> int:
    """The memory file, open for mapping (read-only: a restored guest's
    writes go to its own private copies)."""
    try:
        return os.open(Path(path) / MEMORY, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SnapshotError(f"snapshot {path}: {e.strerror}") from None


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
