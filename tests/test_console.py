"""The console's host side, without KVM: escapes, raw mode, input pacing."""

from __future__ import annotations

import os
import pty
import termios
import threading
import time

from pyvmm.console.input import InputPump
from pyvmm.console.terminal import ESCAPE, QUIT, SHOW_HELP, EscapeFilter, RawTerminal
from pyvmm.devices.serial import Serial16550

A = bytes([ESCAPE])


def test_plain_bytes_pass_through() -> None:
    assert EscapeFilter().feed(b"echo hi\r\x03") == (b"echo hi\r\x03", [])


def test_escapes() -> None:
    f = EscapeFilter()
    assert f.feed(A + b"h") == (b"", [SHOW_HELP])
    assert f.feed(A + A) == (A, [])  # Ctrl-A Ctrl-A: a literal Ctrl-A
    assert f.feed(A + b"z" + b"ok") == (b"ok", [])  # unknown escape: dropped
    assert f.feed(b"ab" + A + b"x" + b"ignored") == (b"ab", [QUIT])


def test_escape_split_across_reads() -> None:
    f = EscapeFilter()
    assert f.feed(b"a" + A) == (b"a", [])
    assert f.feed(b"x") == (b"", [QUIT])


def test_raw_terminal_restores_settings() -> None:
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        with RawTerminal(slave) as term:
            raw = termios.tcgetattr(slave)
            assert not raw[3] & termios.ICANON and not raw[3] & termios.ISIG
            term.restore()
            term.restore()  # a second restore (signal handler, then exit) is harmless
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def _guest_reads(uart: Serial16550, count: int, out: bytearray) -> None:
    """Read RBR like a slow guest until ``count`` bytes arrived."""
    deadline = time.monotonic() + 10
    while len(out) < count and time.monotonic() < deadline:
        if uart.read(5, 1)[0] & 0x01:  # LSR.DR
            out += uart.read(0, 1)
        else:
            time.sleep(0.001)


def test_pump_never_overruns_the_fifo() -> None:
    uart = Serial16550(out=lambda data: None)
    uart.write(2, b"\x01")  # FCR: enable the 16-byte FIFOs
    uart.write(1, b"\x01")  # IER: received-data interrupt on, as an open port has it
    uart.write(4, b"\x0b")  # MCR: DTR, RTS, OUT2
    r, w = os.pipe()
    payload = bytes(range(256)) * 8  # far more than the FIFO holds
    os.write(w, payload)
    os.close(w)
    pump = InputPump(r, uart)  # the pump owns r now, and closes it
    pump.start()
    got = bytearray()
    reader = threading.Thread(target=_guest_reads, args=(uart, len(payload), got))
    reader.start()
    reader.join()
    pump.stop()
    assert not pump.alive
    assert bytes(got) == payload
    assert not uart.read(5, 1)[0] & 0x02  # LSR.OE: no overrun ever
    assert pump.eof  # the end of the pipe was seen, and nothing else happened


def test_input_waits_until_a_driver_listens() -> None:
    uart = Serial16550(out=lambda data: None)
    r, w = os.pipe()
    os.write(w, b"early")
    pump = InputPump(r, uart)
    pump.start()
    time.sleep(0.5)
    assert not uart.read(5, 1)[0] & 0x01  # LSR.DR: nothing delivered yet
    uart.write(1, b"\x01")  # IER.RDI alone is Linux probing the port: still nothing
    uart.write(4, b"\x0b")  # OUT2 too, but FIFOs off: enabling them would clear them
    time.sleep(0.5)
    assert not uart.read(5, 1)[0] & 0x01
    uart.write(2, b"\x01")  # FIFOs on: the port is open
    got = bytearray()
    _guest_reads(uart, 5, got)
    pump.stop()
    os.close(w)
    assert bytes(got) == b"early"


def test_pump_reports_escapes() -> None:
    uart = Serial16550(out=lambda data: None)
    uart.write(1, b"\x01")
    uart.write(4, b"\x08")
    uart.write(2, b"\x01")
    r, w = os.pipe()
    os.write(w, b"a" + A + b"x")
    actions: list[str] = []
    pump = InputPump(r, uart, escapes=True, on_action=actions.append)
    pump.start()
    deadline = time.monotonic() + 5
    while not actions and time.monotonic() < deadline:
        time.sleep(0.01)
    pump.stop()
    os.close(w)
    assert actions == [QUIT]
    assert uart.read(0, 1) == b"a"
