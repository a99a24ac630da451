"""Live migration with the test guest that writes a count across 4096 pages
and checks them (KVM): over a Unix socket and TCP on 127.0.0.1, through
the Python API and the command line; and every way it can go wrong."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pyvmm as pyvmm_api
from pyvmm.errors import MigrationError, UserError
from tests.cli_util import one_line_error
from tests.counting import goes_on, numbers, verdicts
from tests.guests.build import Guests

pytestmark = [pytest.mark.usefixtures("kvm"), pytest.mark.hwkvm]


def source(guests: Guests) -> pyvmm_api.Machine:
    m = pyvmm_api.Machine(kernel=guests.elf, memory="64M", cmdline="action=memcount")
    m.start()
    m.wait_for(r"^count 3 ok\n", timeout=60)
    return m


class Destination:
    """``Machine(incoming=...)`` started in a thread (start() waits for the guest)."""

    def __init__(self, address: str, **kwargs: object) -> None:
        self.machine = pyvmm_api.Machine(incoming=address, **kwargs)  # type: ignore[arg-type]
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._start, daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            self.machine.start()
        except BaseException as e:
            self.error = e

    def join(self) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive()


def carried_on(src: pyvmm_api.Machine, dst: pyvmm_api.Machine) -> None:
    """The count goes on at the destination from where the source stopped,
    and every check of the guest's own memory passes on both."""
    before = src.console
    dst.wait_for(rf"^count {numbers(before)[-1] + 10} ", timeout=60)
    goes_on(before, dst.console)
    assert set(verdicts(before + dst.console)) == {"ok"}


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_a_running_guest_moves(guests: Guests, tmp_path: Path, kind: str) -> None:
    if kind == "unix":
        address = f"unix:{tmp_path / 'in.sock'}"
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            address = f"tcp:127.0.0.1:{s.getsockname()[1]}"
    dst = Destination(address, memory="64M")
    with source(guests) as src, dst.machine:
        report = src.migrate(address, max_downtime=0.1)
        dst.join()
        assert dst.error is None
        assert src.exit_status == 8
        assert src.outcome is not None and src.outcome.message == f"the guest moved to {address}"
        carried_on(src, dst.machine)
    print(f"\n{kind}: {report.rounds} rounds, {report.pages} pages, {report.bytes_sent} bytes, "
          f"downtime {report.downtime_seconds * 1000:.0f} ms")  # fmt: skip


class Proxy:
    """Between source and destination: forwards the stream, and can cut it
    after ``cut_after`` bytes from the source, or flip the byte at ``flip_at``."""

    def __init__(
        self, listen: Path, to: Path, cut_after: int | None = None, flip_at: int | None = None
    ) -> None:
        self.listen, self.to = listen, to
        self.cut_after, self.flip_at = cut_after, flip_at
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(listen))
        self.server.listen(1)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        a, _ = self.server.accept()
        b = socket.socket(socket.AF_UNIX)
        b.connect(str(self.to))
        threading.Thread(target=self._pump, args=(b, a, None, None), daemon=True).start()
        self._pump(a, b, self.cut_after, self.flip_at)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, cut: int | None, flip: int | None) -> None:
        done = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if flip is not None and done <= flip < done + len(data):
                    data = bytearray(data)
                    data[flip - done] ^= 0x40
                    data = bytes(data)
                if cut is not None and done + len(data) >= cut:
                    dst.sendall(data[: cut - done])
                    break
                dst.sendall(data)
                done += len(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ({"cut_after": 3 << 20}, "closed the connection"),
        ({"flip_at": 2 << 20}, "checksum"),
    ],
)
def test_a_failed_migration_leaves_the_source_running_and_a_second_succeeds(
    guests: Guests, tmp_path: Path, fault: dict[str, int], words: str
) -> None:
    target, through = tmp_path / "in.sock", tmp_path / "proxy.sock"
    dst = Destination(f"unix:{target}", memory="64M")
    with source(guests) as src:
        time.sleep(0.2)
        Proxy(through, target, **fault)
        with pytest.raises(MigrationError, match="the guest runs on here"):
            src.migrate(f"unix:{through}")
        dst.join()
        assert isinstance(dst.error, MigrationError) and words in str(dst.error)
        dst.machine.close()
        assert src.exit_status is None and not os.path.exists(target)
        last = numbers(src.console)[-1]
        src.wait_for(rf"^count {last + 5} ", timeout=60)  # as if nothing happened
        again = Destination(f"unix:{target}", memory="64M")
        with again.machine:
            src.migrate(f"unix:{target}")
            again.join()
            carried_on(src, again.machine)


def test_a_destination_that_dies_leaves_the_source_running(guests: Guests, tmp_path: Path) -> None:
    target = tmp_path / "in.sock"
    dst = subprocess.Popen(
        [sys.executable, "-m", "pyvmm", "run", "--incoming", f"unix:{target}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with source(guests) as src:
            while not target.exists():
                time.sleep(0.05)
            threading.Timer(0.05, dst.kill).start()  # while the pages are on their way
            with pytest.raises(MigrationError, match="the guest runs on here"):
                for _ in range(20):  # a migration quicker than the kill: try again
                    src.migrate(f"unix:{target}")
                    pytest.fail("the migration should have failed")  # pragma: no cover
            last = numbers(src.console)[-1]
            src.wait_for(rf"^count {last + 5} ", timeout=60)
    finally:
        dst.kill()
        dst.wait()


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--memory", "128M"], "this destination was started for 128 MiB"),
        (["--cpus", "2"], "this destination was started for 2"),
    ],
)
def test_a_destination_for_another_machine_refuses_before_any_page(
    guests: Guests, tmp_path: Path, option: list[str], words: str
) -> None:
    target = tmp_path / "in.sock"
    dst = subprocess.Popen(
        [sys.executable, "-m", "pyvmm", "run", "--incoming", f"unix:{target}", *option],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    with source(guests) as src:
        while not target.exists():
            time.sleep(0.05)
        with pytest.raises(MigrationError, match=words):
            src.migrate(f"unix:{target}")
        assert src.exit_status is None
    out, err = dst.communicate(timeout=30)
    waiting, _, refusal = err.partition("\n")
    assert waiting == f"pyvmm: waiting for a guest at unix:{target}"
    one_line_error(subprocess.CompletedProcess(dst.args, dst.returncode, out, refusal), words)


def test_a_source_of_another_format_version_is_refused(tmp_path: Path) -> None:
    from pyvmm.migration import protocol

    target = tmp_path / "in.sock"
    dst = Destination(f"unix:{target}")
    while not target.exists():
        time.sleep(0.05)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(target))
        channel = protocol.Channel(s)
        channel.send(
            protocol.HELLO, protocol.json_frame({"format": "pyvmm-migration", "version": 99})
        )
        kind, payload = channel.receive()
    dst.join()
    assert kind == protocol.REFUSE and "version 99" in protocol.json_payload(payload)["reason"]
    assert isinstance(dst.error, UserError)


def control(path: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(command.encode() + b"\n")
        return s.makefile().readline().strip()


def test_the_command_line_migrates_through_the_control_socket(
    guests: Guests, tmp_path: Path
) -> None:
    target, ctl = tmp_path / "in.sock", tmp_path / "control.sock"
    run = [sys.executable, "-m", "pyvmm", "run"]
    dst = subprocess.Popen([*run, "--incoming", f"unix:{target}", "--trace", "migration"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    src = subprocess.Popen(
        [*run, "--kernel", str(guests.elf), "--memory", "64M", "--cmdline", "action=memcount",
         "--control", f"unix:{ctl}", "--trace", "migration", "--stats",
         "--console-log", str(tmp_path / "src.log")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        while not (ctl.exists() and target.exists()):
            time.sleep(0.05)
        log = tmp_path / "src.log"
        while "count 2 ok" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.05)
        assert control(ctl, "status") == "ok running"
        assert control(ctl, "pause") == "ok paused"
        assert control(ctl, "resume") == "ok running"
        assert control(ctl, "bogus") == "error: unknown command 'bogus'"
        answer = control(ctl, f"migrate unix:{target} 0.1")
        assert answer.startswith(f"ok the guest moved to unix:{target}")
        src_out, src_err = src.communicate(timeout=30)
        assert src.returncode == 8
        # --trace migration: each round; --stats: the migration's table, then the exits'.
        assert re.match(r"migration round 0: \d+ pages, \d+ bytes in \d+ ms", src_err)
        assert "\nmigration paused: " in src_err and "\nmigration done: " in src_err
        assert re.search(r"\npyvmm: migration \(--stats\)\n  rounds +\d+ pre-copy", src_err)
        assert f"\npyvmm: the guest moved to unix:{target}\n" in src_err
        time.sleep(2)
        dst.send_signal(signal.SIGTERM)
        dst_out, dst_err = dst.communicate(timeout=30)
        assert dst.returncode == 143
        assert re.search(r"^migration round 0 received: \d+ pages$", dst_err, re.M)
        assert "migration state received: " in dst_err
        assert goes_on(src_out, dst_out)
        assert set(verdicts(src_out + dst_out)) == {"ok"}
    finally:
        for p in (src, dst):
            if p.poll() is None:
                p.kill()
                p.communicate()


@pytest.mark.parametrize("address", ["nowhere", "tcp:host", "tcp:h:0", "unix:"])
def test_bad_addresses_are_one_line(guests: Guests, address: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pyvmm", "run", "--incoming", address],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    one_line_error(r, "invalid migration address")
