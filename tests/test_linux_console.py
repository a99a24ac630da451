"""The console and the VM's lifecycle with a real Linux guest, under KVM.

Three clones of the default guest's cached snapshot (pyvmm_snapshot: its
shell ready), each resumed by ``pyvmm run --restore`` side by side: one on
a pseudo-terminal, typed into like a person would and left with Ctrl-A x;
one whose standard input is a pipe, carrying a script that ends with
``poweroff -f``; one made to panic.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Generous: a restored guest answers in well under a second.
TIMEOUT = 300
PIPED_SCRIPT = b"echo piped-$((40+2))\npoweroff -f\n"
PANIC_SCRIPT = b"echo c > /proc/sysrq-trigger\n"

pytestmark = pytest.mark.hwkvm


@dataclass
class PtyGuest:
    """``pyvmm run`` on a pseudo-terminal; everything it prints is collected."""

    proc: subprocess.Popen[bytes]
    master: int
    slave: int
    before: list[object]
    output: bytearray = field(default_factory=bytearray)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def collect(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.output += data

    def wait_for(self, pattern: bytes, timeout: float, start: int = 0) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                m = re.search(pattern, bytes(self.output[start:]), re.MULTILINE)
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        with self.lock:
            tail = bytes(self.output[-2000:]).decode(errors="replace")
        pytest.fail(f"no {pattern!r} on the console within {timeout} s:\n{tail}")


@pytest.fixture(scope="module")
def guests(
    kvm: None, tmp_path_factory: pytest.TempPathFactory, pyvmm_snapshot: Path
) -> Iterator[dict[str, object]]:
    cmd = [sys.executable, "-m", "pyvmm", "run", "--restore", str(pyvmm_snapshot)]

    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    tty_proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave)
    tty_guest = PtyGuest(tty_proc, master, slave, before)
    threading.Thread(target=tty_guest.collect, daemon=True).start()

    log = tmp_path_factory.mktemp("piped") / "console.log"
    with open(log, "wb") as out:
        piped = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    assert piped.stdin is not None
    piped.stdin.write(PIPED_SCRIPT)
    piped.stdin.close()  # the end of input must not end the VM

    panic_log = tmp_path_factory.mktemp("panic") / "console.log"
    with open(panic_log, "wb") as out:
        panic = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    assert panic.stdin is not None
    panic.stdin.write(PANIC_SCRIPT)
    panic.stdin.close()
    yield {"tty": tty_guest, "piped": (piped, log), "panic": (panic, panic_log)}
    for proc in (tty_proc, piped, panic):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    os.close(master)
    os.close(slave)


def test_typing_into_the_shell_and_quitting(guests: dict[str, object]) -> None:
    g = guests["tty"]
    assert isinstance(g, PtyGuest)
    mark = len(g.output)
    os.write(g.master, b"echo $((6*7))\r")
    g.wait_for(rb"^42\r?$", 120, start=mark)
    os.write(g.master, b"\x01h")
    g.wait_for(rb"Ctrl-A", 30, start=mark)
    os.write(g.master, b"\x01x")
    assert g.proc.wait(timeout=60) == 0
    # Raw mode is undone: the terminal is as it was before pyvmm started.
    assert termios.tcgetattr(g.slave) == g.before


def finished(guests: dict[str, object], name: str) -> tuple[int, str]:
    """Wait for one of the background guests: its exit status and console."""
    entry = guests[name]
    assert isinstance(entry, tuple)
    proc: subprocess.Popen[bytes] = entry[0]
    log: Path = entry[1]
    try:
        status = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the {name} guest did not end:\n{log.read_text(errors='replace')[-2000:]}")
    return status, log.read_text(errors="replace")


def test_piped_script_and_poweroff(guests: dict[str, object]) -> None:
    status, console = finished(guests, "piped")
    assert re.search(r"^piped-42\r?$", console, re.MULTILINE), console[-2000:]
    assert status == 0, console[-2000:]
    assert "reboot: Power down" in console


def test_kernel_panic_has_its_own_status(guests: dict[str, object]) -> None:
    status, console = finished(guests, "panic")
    assert "Kernel panic" in console, console[-2000:]
    assert status == 7, console[-2000:]
    assert "pyvmm: guest kernel panicked" in console
