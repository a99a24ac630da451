"""--console and --console-log backends, without KVM."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyvmm.console.backends import ConsoleSpec, UnixConsole, parse
from pyvmm.console.output import ConsoleOutput
from pyvmm.errors import UserError


class Reader:
    """Stands in for an input pump: records the descriptor it was given,
    and owns it, as a pump does."""

    def __init__(self, fd: int, on_end: Callable[[], None]) -> None:
        self.fd = fd
        self.on_end = on_end
        self.stopped = False

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 2.0) -> None:
        if not self.stopped:
            self.stopped = True
            os.close(self.fd)


def test_parse() -> None:
    assert parse("stdio") == ConsoleSpec("stdio")
    assert parse("none") == ConsoleSpec("none")
    assert parse("file:/tmp/x") == ConsoleSpec("file", Path("/tmp/x"))
    assert parse("unix:/run/c.sock") == ConsoleSpec("unix", Path("/run/c.sock"))
    for bad in ("", "tcp:1", "file:", "unix", "stdio:x"):
        with pytest.raises(UserError):
            parse(bad)


def test_unix_console_serves_one_client_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "console.sock"
    readers: list[Reader] = []

    def start_input(fd: int, on_end: Callable[[], None]) -> Reader:
        readers.append(Reader(fd, on_end))
        return readers[-1]

    output = ConsoleOutput()
    server = UnixConsole(path, output, start_input)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a root shell: the owner's only
        output.write(b"nobody listens")  # dropped, as on a serial line
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(path))
            deadline = time.monotonic() + 5
            got = b""
            while b"hello" not in got and time.monotonic() < deadline:
                output.write(b"hello")
                c.settimeout(0.2)
                with contextlib.suppress(TimeoutError):
                    got += c.recv(100)
            assert b"hello" in got and b"nobody" not in got
        assert len(readers) == 1
    finally:
        server.close()
        output.close(0)
    assert not path.exists()
    assert all(r.stopped for r in readers)


def test_unix_console_refuses_to_replace_a_file(tmp_path: Path) -> None:
    path = tmp_path / "precious"
    path.write_text("data")
    with pytest.raises(UserError, match="not a socket"):
        UnixConsole(path, ConsoleOutput(), lambda fd, end: Reader(fd, end))
    assert path.read_text() == "data"


def test_unix_console_refuses_a_socket_in_use_and_reuses_a_stale_one(tmp_path: Path) -> None:
    path = tmp_path / "console.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen(1)
    with pytest.raises(UserError, match="another program is listening"):
        UnixConsole(path, ConsoleOutput(), lambda fd, end: Reader(fd, end))
    assert path.exists()  # left alone
    other.close()  # the socket file stays behind, with nobody listening
    server = UnixConsole(path, ConsoleOutput(), lambda fd, end: Reader(fd, end))
    server.close()


def test_unix_console_path_too_long(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="longer than a Unix socket address"):
        UnixConsole(tmp_path / ("x" * 120), ConsoleOutput(), lambda fd, end: Reader(fd, end))
