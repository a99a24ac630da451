"""--console and --console-log backends, without KVM."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest

from pyvmm.console_backends import ConsoleSpec, UnixConsole, parse
from pyvmm.errors import UserError


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
    clients: list[int] = []
    attached = threading.Event()

    def on_client(fd: int) -> None:
        clients.append(fd)
        attached.set()

    server = UnixConsole(path, on_client)
    try:
        server.write(b"nobody listens")  # dropped, as on a serial line
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(path))
            assert attached.wait(5)
            deadline = time.monotonic() + 5
            got = b""
            while b"hello" not in got and time.monotonic() < deadline:
                server.write(b"hello")
                c.settimeout(0.2)
                with contextlib.suppress(TimeoutError):
                    got += c.recv(100)
            assert b"hello" in got and b"nobody" not in got
        assert len(clients) == 1
    finally:
        server.close()
    assert not path.exists()


def test_unix_console_refuses_to_replace_a_file(tmp_path: Path) -> None:
    path = tmp_path / "precious"
    path.write_text("data")
    with pytest.raises(UserError, match="not a socket"):
        UnixConsole(path, lambda fd: None)
    assert path.read_text() == "data"
