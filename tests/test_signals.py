"""How pyvmm ends on signals, and that the terminal always comes back, with a
test guest that waits with interrupts on until the host ends it (KVM)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator

import pytest

from tests.guests.build import Guests

pytestmark = [pytest.mark.usefixtures("kvm"), pytest.mark.hwkvm]


def start(guests: Guests, **streams: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "pyvmm", "run", "--kernel", str(guests.elf),
           "--memory", "64M", "--cmdline", "action=wait"]  # fmt: skip
    return subprocess.Popen(cmd, **streams)  # type: ignore[call-overload,no-any-return]


def wait_for_output(read_fd: int, text: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(read_fd, False)
    while text not in seen and time.monotonic() < deadline:
        try:
            seen += os.read(read_fd, 4096)
        except BlockingIOError:
            time.sleep(0.05)
    assert text in seen, seen
    return seen


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_on_a_terminal_restores_it(guests: Guests, sig: int, status: int) -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        proc = start(guests, stdin=slave, stdout=slave, stderr=slave)
        wait_for_output(master, b"waiting")
        assert termios.tcgetattr(slave) != before  # raw mode while the guest runs
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == status
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


@contextlib.contextmanager
def waiting_without_a_terminal(guests: Guests) -> Iterator[subprocess.Popen[bytes]]:
    """The waiting guest, output on a pipe, no terminal; killed afterwards."""
    r, w = os.pipe()
    proc = start(guests, stdin=subprocess.DEVNULL, stdout=w, stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        wait_for_output(r, b"waiting")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(r)


def test_sigint_without_a_terminal(guests: Guests) -> None:
    with waiting_without_a_terminal(guests) as proc:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130


def test_guest_waiting_with_interrupts_on_is_not_ended(guests: Guests) -> None:
    """Unlike a halt with interrupts off, this guest could still be woken."""
    with waiting_without_a_terminal(guests) as proc:
        time.sleep(2)  # several idle checks
        assert proc.poll() is None
