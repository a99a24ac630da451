"""The console and the VM's lifecycle with a real Linux guest, under KVM.

Three guests boot side by side: one on a pseudo-terminal, typed into like a
person would and left with Ctrl-A x; one whose standard input is a pipe,
carrying a script that ends with ``poweroff -f``; one made to panic.
"""

from __future__ import annotations

import base64
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

from pyvmm.images import default

#: Generous: a PVM host spends ~100 s of emulated kernel time per boot.
BOOT_TIMEOUT = 900
BANNER = re.compile(rb"pyvmm guest: Linux \S+, up [0-9.]+ s")
PIPED_SCRIPT = b"echo piped-$((40+2))\npoweroff -f\n"


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
def guests(kvm: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    default.small_kernel()
    default.initramfs_image()
    cmd = [sys.executable, "-m", "pyvmm", "run", "--guest", "small", "--memory", "256M"]

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

    crash = base64.b64encode(b"echo c > /proc/sysrq-trigger").decode()
    panic_log = tmp_path_factory.mktemp("panic") / "console.log"
    with open(panic_log, "wb") as out:
        panic = subprocess.Popen(
            [*cmd, "--cmdline", f"pyvmm.cmd64={crash}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
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
    g.wait_for(BANNER.pattern, BOOT_TIMEOUT)
    time.sleep(2)  # let the shell print its prompt
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
        status = proc.wait(timeout=BOOT_TIMEOUT)
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
