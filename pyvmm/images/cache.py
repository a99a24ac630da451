"""Where built images live, and writing them there safely.

The cache is ``$PYVMM_CACHE``, else ``$XDG_CACHE_HOME/pyvmm``, else
``~/.cache/pyvmm``. Every file is written under a temporary name and renamed
into place, so an interrupted build never leaves a half-written image that a
later run would trust.
"""

from __future__ import annotations

import contextlib
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
    """A temporary directory next to ``final``, renamed to it on success.
    Its name carries the builder's PID, so an abandoned one can be cleaned up."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.{os.getpid()}."))
    try:
        yield tmp
        tmp.chmod(_umasked(0o755))  # mkdtemp makes it private
        if final.exists():
            _remove_tree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            _remove_tree(tmp)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def progress(message: str) -> None:
    """A progress line on stderr, so it never mixes with the guest's console."""
    print(f"pyvmm: {message}", file=sys.stderr, flush=True)
