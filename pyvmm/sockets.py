"""Unix socket paths: taking one over only when nobody uses it."""

from __future__ import annotations

import errno
import socket
import stat
from pathlib import Path

from pyvmm.errors import UserError

#: Longest path a Unix socket address holds (sun_path, less its NUL).
SUN_PATH_MAX = 107


def claim_path(path: Path, what: str) -> None:
    """Make ``path`` free for a new listening socket: refuse a path that is
    not a socket, a socket someone listens on, or one too long to bind;
    remove a socket left behind by a process that is gone. ``what`` names
    the option in messages ("--console unix:PATH")."""
    if len(bytes(path)) > SUN_PATH_MAX:
        raise UserError(
            f"{what}: the path is longer than a Unix socket address holds ({SUN_PATH_MAX} bytes)"
        )
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise UserError(f"{what}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as e:
        if e.errno != errno.ECONNREFUSED:
            raise UserError(f"{what}: {e.strerror}") from None
        path.unlink()  # nobody listens: left by an earlier run
        return
    finally:
        probe.close()
    raise UserError(f"{what}: another program is listening on it")
