"""Where the serial console goes: ``--console stdio|none|file:PATH|unix:PATH``
and ``--console-log PATH``.

The Unix socket backend listens on PATH (mode 0600: the console is a root
shell in the default guest); one client at a time
(``socat -,raw,echo=0 UNIX-CONNECT:PATH``) sees the output and types into
the guest, and a new client takes over from the previous one. Each client
is a lossy output sink and an input pump, each owning a descriptor of its
own: when the client goes, both end and close what is theirs. Output while
nobody is attached is dropped, as on a serial line.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pyvmm.console.output import ConsoleOutput, Sink
from pyvmm.errors import UserError
from pyvmm.sockets import claim_path

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


def open_log(path: Path, append: bool = False, protect: tuple[Path, ...] = ()) -> int:
    """A file for --console-log or --console file:, opened up front so a bad
    path is a usage error before the VM exists (``append``: after a reboot).
    ``protect``: files it must not be (the kernel, the initrd)."""
    with contextlib.suppress(OSError):
        for other in protect:
            if path.exists() and os.path.samefile(path, other):
                raise UserError(f"cannot write the console to {path}: it is the guest's {other}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    try:
        return os.open(path, flags, 0o644)
    except OSError as e:
        raise UserError(f"cannot write the console to {path}: {e.strerror}") from None


class Stoppable(Protocol):
    def start(self) -> None: ...

    def stop(self, timeout: float = ...) -> None: ...


#: Starts reading a client's descriptor (which it then owns) into the guest;
#: the callback runs when that input ends.
StartInput = Callable[[int, Callable[[], None]], Stoppable]


class _Client:
    """One attached client: its output sink and its input reader."""

    def __init__(self, sock: socket.socket, output: ConsoleOutput, start_input: StartInput) -> None:
        self._ended = threading.Event()
        self.sock = sock
        self.output = output
        self.sink = output.add(Sink(os.dup(sock.fileno()), "unix-client", lossy=True, owns_fd=True,
                                    on_error=lambda s, e: self.end()))  # fmt: skip
        self.input = start_input(os.dup(sock.fileno()), self.end)

    def end(self) -> None:
        """Detach: wake both threads (shutdown) and let each close its own descriptor."""
        if self._ended.is_set():
            return
        self._ended.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.output.remove(self.sink)
        self.sink.close(0)
        self.sock.close()  # the listener's copy; the threads hold their own

    def join(self, timeout: float) -> None:
        self.input.stop(timeout)
        self.sink.join(timeout)


class UnixConsole:
    """A listening Unix socket; the attached client is the console."""

    def __init__(self, path: Path, output: ConsoleOutput, start_input: StartInput) -> None:
        self.path = path
        self._output = output
        self._start_input = start_input
        claim_path(path, f"--console unix:{path}")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Before bind, so the socket file is created private whatever the umask.
            os.fchmod(self._server.fileno(), 0o600)
            self._server.bind(str(path))
        except OSError as e:
            self._server.close()
            raise UserError(f"cannot listen on {path}: {e.strerror or e}") from None
        self._server.listen(4)
        self._client: _Client | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="pyvmm-console-unix", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                sock, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:
                old, self._client = self._client, None
            if old is not None:
                # The last client's input ends before the new one's begins:
                # never two readers typing into the guest at once.
                old.end()
                old.input.stop(2.0)
            with self._lock:
                if self._closing.is_set():
                    sock.close()
                    return
                self._client = _Client(sock, self._output, self._start_input)

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(2.0)
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.end()
            client.join(2.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
