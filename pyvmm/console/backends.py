"""Where the serial console goes: ``--console stdio|none|file:PATH|unix:PATH``
and ``--console-log PATH``.

Each backend is an output function for the UART and, where there is one, a
source of input for :class:`pyvmm.console.InputPump`. The Unix socket
backend listens on PATH; one client at a time (``socat - UNIX-CONNECT:PATH``)
sees the output and types into the guest, and another may attach after it
leaves. Output while nobody is attached is dropped, as on a serial line.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyvmm.errors import UserError

KINDS = ("stdio", "none", "file", "unix")


@dataclass(frozen=True)
class ConsoleSpec:
    kind: str
    path: Path | None = None


def parse(text: str) -> ConsoleSpec:
    """``stdio``, ``none``, ``file:PATH`` or ``unix:PATH``."""
    kind, sep, path = text.partition(":")
    if kind in ("stdio", "none") and not sep:
        return ConsoleSpec(kind)
    if kind in ("file", "unix") and sep and path:
        return ConsoleSpec(kind, Path(path))
    raise UserError(f"invalid --console {text!r}: use stdio, none, file:PATH or unix:PATH")


def open_log(path: Path, append: bool = False) -> int:
    """A file for --console-log or --console file:, opened up front so a bad
    path is a usage error before the VM exists (``append``: after a reboot)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    try:
        return os.open(path, flags, 0o644)
    except OSError as e:
        raise UserError(f"cannot write the console to {path}: {e.strerror}") from None


class UnixConsole:
    """A listening Unix socket; the attached client is the console."""

    def __init__(self, path: Path, on_client: Callable[[int], None]) -> None:
        self.path = path
        self._on_client = on_client
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise UserError(f"--console unix:{path}: the path exists and is not a socket")
            path.unlink()  # a socket left behind by an earlier run
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._server.bind(str(path))
        except OSError as e:
            self._server.close()
            raise UserError(f"cannot listen on {path}: {e.strerror}") from None
        self._server.listen(1)
        self._client: socket.socket | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="pyvmm-console-unix", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:
                old, self._client = self._client, client
            if old is not None:
                old.close()
            self._on_client(client.fileno())

    def write(self, data: bytes) -> None:
        with self._lock:
            client = self._client
            if client is None:
                return
            try:
                client.sendall(data)
            except OSError:
                self._client = None
                client.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
