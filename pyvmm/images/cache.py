"""Where built images live, and writing them there safely.

The cache is ``$PYVMM_CACHE``, else ``$XDG_CACHE_HOME/pyvmm``, else
``~/.cache/pyvmm``. Every file is written under a temporary name and renamed
into place, so an interrupted build never leaves a half-written image that a
later run would trust: staging names start with a dot, and nothing that
looks for images takes one. Builders of one image take a lock on it and
look again once they hold it, so two at once build it once. Each image has
a manifest of its files' sizes and SHA-256, written last: an image whose
files do not match it is built again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    if env := os.environ.get("PYVMM_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyvmm"


def _umasked(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def write_atomic(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _umasked(0o644))  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned(final: Path) -> None:
    """Staging directories left by builds whose process is gone (killed mid-way)."""
    for old in final.parent.glob(f".{final.name}.*"):
        try:
            pid = int(old.name.split(".")[-2])
        except (ValueError, IndexError):
            continue
        if old.is_dir() and not _alive(pid):
            _remove_tree(old)


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A temporary directory next to ``final``, given a manifest of its files
    and renamed to it on success. Its name carries the builder's PID, so an
    abandoned one can be cleaned up."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{os.getpid()}."))
    try:
        yield tmp
        write_manifest(tmp, sorted(p.name for p in tmp.iterdir() if p.is_file()))
        tmp.chmod(_umasked(0o755))  # mkdtemp makes it private
        if final.exists():
            _remove_tree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            _remove_tree(tmp)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (lockf: released if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.lockf(fd, os.F_LOCK, 0)
        yield
    finally:
        os.close(fd)


def visible(paths: Iterator[Path]) -> list[Path]:
    """Paths none of whose parts below the cache is a hidden (staging) name."""
    root = cache_dir()
    out = []
    for p in paths:
        try:
            parts = p.relative_to(root).parts
        except ValueError:
            parts = p.parts
        if not any(part.startswith(".") for part in parts):
            out.append(p)
    return out


MANIFEST = "MANIFEST"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, names: list[str]) -> None:
    """Record each file's size and SHA-256 (last, once they are all there)."""
    lines = [f"{(folder / n).stat().st_size} {_digest(folder / n)} {n}\n" for n in names]
    write_atomic(folder / MANIFEST, "".join(lines).encode())


def matches_manifest(folder: Path, deep: bool = False) -> bool:
    """Whether every file the manifest names is there with its size (and,
    ``deep``, its SHA-256). Cheap without ``deep``: a truncated image is
    caught by its size."""
    try:
        lines = (folder / MANIFEST).read_text().splitlines()
        for line in lines:
            size, digest, name = line.split(" ", 2)
            path = folder / name
            if path.stat().st_size != int(size) or (deep and _digest(path) != digest):
                return False
    except (OSError, ValueError):
        return False
    return bool(lines)


def progress(message: str) -> None:
    """A progress line on stderr, so it never mixes with the guest's console."""
    print(f"pyvmm: {message}", file=sys.stderr, flush=True)
