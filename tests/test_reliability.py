"""Reliability with the test guest (KVM): a console that blocks never keeps
pyvmm from ending, Unix-socket clients come and go by the thousand without
leaking or leaking into the guest, and errors from the environment are one
line each."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyvmm as pyvmm_api
from tests.cli_util import one_line_error, pyvmm
from tests.guests.build import Guests

pytestmark = pytest.mark.usefixtures("kvm")


def start(guests: Guests, action: str, *args: str, **popen: object) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "pyvmm", "run", "--kernel", str(guests.elf), "--memory", "64M",
           "--cmdline", f"action={action}", *args]  # fmt: skip
    return subprocess.Popen(cmd, **popen)  # type: ignore[call-overload, no-any-return]


def ends_within(proc: subprocess.Popen[bytes], seconds: float) -> int:
    """The process's status, if it ends within ``seconds``; else it is killed and the test fails."""
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"pyvmm did not end within {seconds} s")


def stderr_of(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stderr is not None
    return proc.stderr.read().decode()


def wait_until(check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)]
)
def test_a_blocked_standard_output_never_keeps_pyvmm_from_ending(
    guests: Guests, sig: int, status: int
) -> None:
    """`pyvmm run ... | sleep 600`: nobody reads standard output. The guest
    counts until every buffer is full and its transmitter reads busy; a
    signal still ends pyvmm within 2 s."""
    r, w = os.pipe()
    proc = start(guests, "count", stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    try:
        # Fill the pipe (64 KiB) and pyvmm's own buffer behind it.
        time.sleep(4)
        assert proc.poll() is None
        started = time.monotonic()
        proc.send_signal(sig)
        assert ends_within(proc, 10) == status
        assert time.monotonic() - started < 2
    finally:
        os.close(r)
        if proc.poll() is None:
            proc.kill()


def test_a_client_that_stops_reading_never_keeps_pyvmm_from_ending(
    guests: Guests, tmp_path: Path
) -> None:
    path = tmp_path / "console.sock"
    proc = start(guests, "count", "--console", f"unix:{path}", stderr=subprocess.PIPE)
    try:
        wait_until(path.exists)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(str(path))
            time.sleep(3)  # the socket's buffers fill; the client never reads
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert ends_within(proc, 10) == 143
            assert time.monotonic() - started < 2
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_slow_client_stalls_neither_the_guest_nor_the_next_client(
    guests: Guests, tmp_path: Path
) -> None:
    path, log = tmp_path / "console.sock", tmp_path / "console.log"
    proc = start(guests, "count", "--console", f"unix:{path}", "--console-log", str(log))
    try:
        wait_until(path.exists)
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(str(path))
        time.sleep(2)
        counted = len(log.read_bytes())
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as fresh:
            fresh.connect(str(path))  # takes over from the stuck one
            fresh.settimeout(10)
            got = b""
            while b"count" not in got:
                got += fresh.recv(4096)
        time.sleep(1)
        assert len(log.read_bytes()) > counted  # the guest kept counting throughout
        stuck.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        ends_within(proc, 10)


def test_a_second_pyvmm_cannot_take_a_console_socket_in_use(guests: Guests, tmp_path: Path) -> None:
    path = tmp_path / "console.sock"
    first = start(guests, "count", "--console", f"unix:{path}", stderr=subprocess.PIPE)
    try:
        wait_until(path.exists)
        r = pyvmm("run", "--kernel", guests.elf, "--console", f"unix:{path}")
        one_line_error(r, "another program is listening on it")
        assert first.poll() is None and path.exists()  # the first goes on, its socket kept
    finally:
        first.send_signal(signal.SIGTERM)
        ends_within(first, 10)
    # A socket nobody listens on any more (left by a killed pyvmm) is taken over.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    again = start(guests, "reset", "--console", f"unix:{path}", stderr=subprocess.PIPE)
    assert ends_within(again, 30) == 0
    assert not path.exists()


def threads_and_fds(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def echo_guest(
    guests: Guests, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    path, log = tmp_path / "console.sock", tmp_path / "console.log"
    proc = start(
        guests, "echo", "--console", f"unix:{path}", "--console-log", str(log),
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_until(lambda: b"echo ready" in (log.read_bytes() if log.exists() else b""))
        yield proc, path, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_thousand_clients_leak_nothing_and_type_nothing_they_did_not_send(
    guests: Guests, tmp_path: Path
) -> None:
    """1,000 connect/disconnect cycles against a guest that echoes what it
    receives and prints dots meanwhile: some clients send a word and read
    its echo, some send and leave at once, some never read at all. Only
    what clients sent may come back; no thread or descriptor is left; and
    SIGTERM then ends pyvmm within 2 s."""
    rng = random.Random(13)
    sent = bytearray()
    with echo_guest(guests, tmp_path) as (proc, path, log):
        before = threads_and_fds(proc.pid)
        for i in range(1000):
            kind = rng.choice(["echo", "echo", "hit-and-run", "silent", "deaf"])
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.connect(str(path))
                if kind == "deaf":
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
                word = f"w{i}z".encode()
                if kind in ("echo", "hit-and-run", "deaf"):
                    c.sendall(word)
                    sent += word
                if kind == "echo":
                    c.settimeout(10)
                    got = b""
                    while word not in got:
                        chunk = c.recv(4096)
                        assert chunk, "the console closed"
                        got += chunk
        time.sleep(1)
        after = threads_and_fds(proc.pid)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert ends_within(proc, 10) == 143
        assert time.monotonic() - started < 2
    assert after == before
    echoed = log.read_bytes().split(b"echo ready\n", 1)[1].replace(b".", b"")
    # Everything echoed was sent by a client, in the order sent; words of
    # clients that left at once may be missing, nothing else may appear.
    assert set(echoed) <= set(b"w0123456789z"), echoed[:200]
    it = iter(sent)
    assert all(byte in it for byte in echoed)  # a subsequence of what was sent


def test_sigterm_at_any_moment_of_client_traffic(guests: Guests, tmp_path: Path) -> None:
    for at in (0.0, 0.3, 1.1):
        folder = tmp_path / f"at{at}"
        folder.mkdir()
        with echo_guest(guests, folder) as (proc, path, _):
            stop = threading.Event()

            def traffic(path: Path = path, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as c:
                        c.connect(str(path))
                        c.sendall(b"abc")

            t = threading.Thread(target=traffic, daemon=True)
            t.start()
            time.sleep(at)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert ends_within(proc, 10) == 143
            assert time.monotonic() - started < 2
            stop.set()
            t.join()


def test_send_to_a_guest_that_never_reads_times_out(guests: Guests) -> None:
    with pyvmm_api.Machine(kernel=guests.elf, memory="64M", cmdline="action=wait") as m:
        m.start()
        m.wait_for("waiting", timeout=30)
        started = time.monotonic()
        with pytest.raises(pyvmm_api.GuestTimeout, match="did not read"):
            m.send(b"x" * 200_000, timeout=3)
        assert time.monotonic() - started < 10


def test_a_closed_standard_output_ends_the_vm_as_a_hang_up(guests: Guests) -> None:
    """`pyvmm run ... | head -1`: the reader goes away after one line."""
    proc = start(guests, "count", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()
    assert ends_within(proc, 10) == 129
    assert stderr_of(proc) == "pyvmm: standard output was closed\n"


def test_a_console_log_on_a_full_disk_stops_with_one_line(guests: Guests) -> None:
    r = pyvmm("run", "--kernel", guests.elf, "--memory", "64M", "--console-log", "/dev/full")
    assert r.returncode == 0, r.stderr  # the guest still ran to its end
    assert r.stderr == "pyvmm: console output to /dev/full stopped: No space left on device\n"
    assert r.stdout.endswith("reset\n")


def test_a_console_log_cannot_be_the_kernel(guests: Guests, tmp_path: Path) -> None:
    kernel = tmp_path / "kernel"
    kernel.write_bytes(guests.elf.read_bytes())
    one_line_error(pyvmm("run", "--kernel", kernel, "--console-log", kernel), "it is the guest's")
    assert kernel.read_bytes() == guests.elf.read_bytes()


def test_a_command_line_that_is_not_utf8(guests: Guests) -> None:
    r = subprocess.run(
        [sys.executable.encode(), b"-m", b"pyvmm", b"run", b"--kernel", bytes(guests.elf),
         b"--memory", b"64M", b"--cmdline", b"byte=\xff"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert b"cmdline: byte=\xff" in r.stdout


def test_a_socket_path_that_is_too_long(guests: Guests, tmp_path: Path) -> None:
    one_line_error(
        pyvmm("run", "--kernel", guests.elf, "--console", f"unix:{tmp_path / ('x' * 120)}"),
        "longer than a Unix socket address",
    )


def test_extra_files_follow_the_initrd_rules(guests: Guests, tmp_path: Path) -> None:
    from pyvmm.images.debian import ImageError

    base = tmp_path / "base.cpio"
    base.write_bytes(b"070701" + b"0" * 104)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(600 << 20)
    cases = [
        ({"/dev/zero": "/x"}, "not a regular file"),
        ({fifo: "/x"}, "not a regular file"),
        ({tmp_path / "nope": "/x"}, "no such file"),
        ({big: "/x"}, "more than the guest's 512 MiB"),
        ({base: "relative/x"}, "must be absolute"),
        ({base: "/a/../x"}, "without '..'"),
        ({base: "/a\nb"}, "NUL or a newline"),
        ({base: "/a\0b"}, "NUL or a newline"),
    ]
    cache = tmp_path / "cache"
    os.environ["PYVMM_CACHE"] = str(cache)
    try:
        for files, words in cases:
            started = time.monotonic()
            with pytest.raises(ImageError, match=re.escape(words)):
                pyvmm_api.Machine(kernel=guests.elf, initrd=base, memory="512M", extra_files=files)
            assert time.monotonic() - started < 5  # no FIFO waited on, no big file read
        assert not (cache / "initramfs-extra").exists() or not list(
            (cache / "initramfs-extra").glob("*.cpio")
        )
        m = pyvmm_api.Machine(
            kernel=guests.elf, initrd=base, memory="64M", extra_files={base: "//etc/x"}
        )
        assert Path(m.config.initrd).read_bytes().count(b"etc/x\0") == 1  # "//etc/x" is /etc/x
    finally:
        del os.environ["PYVMM_CACHE"]
