"""``pyvmm run --control unix:PATH``: steering a running guest from outside.

A Unix socket (mode 0600) that takes one command per line and answers each
with one line, ``ok ...`` or ``error ...``:

    status                   running | paused
    pause                    every vCPU stopped (Vmm.pause)
    resume                   and going on
    snapshot DIR             the guest saved to DIR; it runs on
    migrate ADDR [SECONDS]   the guest moved to the pyvmm waiting at ADDR
                             (unix:PATH or tcp:HOST:PORT), with a downtime
                             target (default 0.1 s); then this pyvmm ends
                             with status 8. If it fails, the guest runs on.
    quit                     the guest stopped (status 0)

``socat - UNIX-CONNECT:PATH`` is enough to type them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from pyvmm.errors import MigrationError, UserError
from pyvmm.sockets import claim_path
from pyvmm.vmm.ending import Ending, Outcome
from pyvmm.vmm.lifecycle import Vmm

#: Longest command line read.
MAX_LINE = 4096


class ControlServer:
    """Serves ``--control``; ``say`` reports migrations and snapshots on stderr."""

    def __init__(self, path: Path, vmm: Vmm, say: Callable[[str], None]) -> None:
        self.path = path
        self.vmm = vmm
        self._say = say
        claim_path(path, f"--control unix:{path}")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        os.fchmod(self._server.fileno(), 0o600)
        try:
            self._server.bind(str(path))
        except OSError as e:
            self._server.close()
            raise UserError(f"--control unix:{path}: {e.strerror or e}") from None
        self._server.listen(4)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="pyvmm-control", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb", buffering=0) as stream:
            while not self._closing.is_set():
                try:
                    line = stream.readline(MAX_LINE)
                except OSError:
                    return
                if not line:
                    return
                answer = self.command(line.decode(errors="replace").strip())
                try:
                    stream.write(answer.encode() + b"\n")
                except OSError:
                    return

    def command(self, line: str) -> str:
        """Carry out one command; its one-line answer."""
        words = line.split()
        if not words:
            return "error: no command"
        verb, args = words[0], words[1:]
        if self.vmm.ended:
            return "error: the guest has ended"
        try:
            if verb == "status" and not args:
                return "ok paused" if self.vmm.paused else "ok running"
            if verb == "pause" and not args:
                self.vmm.pause()
                return "ok paused"
            if verb == "resume" and not args:
                self.vmm.resume()
                return "ok running"
            if verb == "quit" and not args:
                self.vmm.stop(Outcome(Ending.QUIT, "quit through --control"))
                return "ok quitting"
            if verb == "snapshot" and len(args) == 1:
                return self._snapshot(Path(args[0]))
            if verb == "migrate" and len(args) in (1, 2):
                return self._migrate(args[0], float(args[1]) if len(args) == 2 else 0.1)
        except (UserError, MigrationError, ValueError, TimeoutError) as e:
            return f"error: {e}"
        return f"error: unknown command {line[:80]!r}"

    def _snapshot(self, path: Path) -> str:
        from pyvmm.snapshot.take import take

        taken = take(self.vmm, path)
        message = f"snapshot saved to {path} (guest paused {taken.paused_seconds * 1000:.0f} ms)"
        self._say(f"pyvmm: {message}\n")
        return f"ok {message}"

    def _migrate(self, where: str, max_downtime: float) -> str:
        from pyvmm.migration import protocol, send

        address = protocol.parse_address(where)
        try:
            report = send.migrate(self.vmm, address, max_downtime)
        except MigrationError as e:
            self._say(f"pyvmm: {e}\n")
            raise
        if self.vmm.config.stats:
            self._say(f"pyvmm: migration (--stats)\n{report.table()}")
        self.vmm.stop(Outcome(Ending.MIGRATED, f"the guest moved to {address}"))
        return (
            f"ok the guest moved to {address} ({report.rounds} rounds, {report.pages} pages, "
            f"{report.bytes_sent} bytes, downtime {report.downtime_seconds * 1000:.0f} ms)"
        )

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(2)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
