"""The 16550A model, driven the way Linux's 8250 driver drives it."""

from __future__ import annotations

import pytest

from pyvmm.devices import serial
from pyvmm.devices.device import Allocation
from pyvmm.devices.serial import Serial16550

THR = RBR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7


class Uart:
    """A UART with its output and interrupt line recorded."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.out = bytearray()
        self.irq_changes: list[bool] = []
        self.room = room
        self.dev = Serial16550(self.out.extend, lambda: self.room - len(self.out))
        self.dev.attach(Allocation(), self.irq_changes.append)

    def r(self, reg: int) -> int:
        return self.dev.read(reg, 1)[0]

    def w(self, reg: int, value: int) -> None:
        self.dev.write(reg, bytes([value]))

    @property
    def irq(self) -> bool:
        return bool(self.irq_changes) and self.irq_changes[-1]


@pytest.fixture
def uart() -> Uart:
    return Uart()


def test_reset_state(uart: Uart) -> None:
    assert uart.r(IER) == 0
    assert uart.r(IIR) == 0x01  # no interrupt pending, FIFOs off
    assert uart.r(LSR) == 0x60  # THR empty, transmitter empty
    assert uart.r(MSR) & 0xF0 == 0xB0  # DCD, DSR, CTS
    assert uart.irq_changes == []


def test_linux_8250_autoconfig_probe(uart: Uart) -> None:
    # drivers/tty/serial/8250/8250_port.c autoconfig(): IER existence test.
    uart.w(IER, 0)
    assert uart.r(IER) & 0x0F == 0
    uart.w(IER, 0x0F)
    assert uart.r(IER) & 0x0F == 0x0F
    uart.w(IER, 0)
    # Loopback check: MCR = LOOP | RTS | OUT2 must show CTS | DCD in MSR.
    uart.w(MCR, 0x10 | 0x0A)
    assert uart.r(MSR) & 0xF0 == 0x90
    uart.w(MCR, 0)
    # FIFO check: IIR bits 7-6 = 11 means a 16550A.
    uart.w(FCR, 0x01)
    assert uart.r(IIR) >> 6 == 3
    # With LCR = 0xBF the EFR probe reads IIR, which must not be 0 (not a 16650).
    uart.w(LCR, 0xBF)
    assert uart.r(IIR) != 0
    uart.w(LCR, 0)
    assert not uart.irq  # the IER test raised THRE briefly; IER = 0 dropped it


def test_ier_upper_bits_read_as_zero(uart: Uart) -> None:
    uart.w(IER, 0xFF)
    assert uart.r(IER) == 0x0F


def test_transmit_goes_to_output(uart: Uart) -> None:
    for c in b"hi\n":
        uart.w(THR, c)
    assert uart.out == b"hi\n"
    assert uart.r(LSR) & 0x60 == 0x60


def test_divisor_latch_does_not_transmit(uart: Uart) -> None:
    uart.w(LCR, 0x83)  # DLAB + 8N1
    uart.w(DLL, 0x01)
    uart.w(DLM, 0x02)
    assert uart.r(DLL) == 0x01 and uart.r(DLM) == 0x02
    uart.w(LCR, 0x03)
    assert uart.out == b""
    assert uart.r(IER) == 0  # IER was not touched by the DLM write


def test_scratch_register(uart: Uart) -> None:
    uart.w(SCR, 0xA5)
    assert uart.r(SCR) == 0xA5


def test_thre_interrupt_when_enabled_and_after_each_byte(uart: Uart) -> None:
    uart.w(IER, 0x02)  # enabling THRI with THR empty raises the line
    assert uart.irq
    assert uart.r(IIR) == 0x02  # THRE; reading IIR acknowledges it
    assert not uart.irq
    assert uart.r(IIR) == 0x01
    before = len(uart.irq_changes)
    uart.w(THR, ord("x"))  # each transmitted byte empties THR again: a new edge
    assert uart.irq_changes[before:] == [True]
    assert uart.r(IIR) == 0x02
    uart.w(IER, 0)
    assert not uart.irq


def test_thre_test_of_8250_startup(uart: Uart) -> None:
    # serial8250_do_startup(): IER = THRI, read IIR twice: pending, then cleared.
    uart.w(FCR, 0x07)
    uart.w(IER, 0x02)
    iir1 = uart.r(IIR)
    iir2 = uart.r(IIR)
    assert iir1 & 0x0F == 0x02 and iir1 & 0xC0 == 0xC0
    assert iir2 & 0x01


def test_receive_without_fifo_holds_one_byte(uart: Uart) -> None:
    assert uart.dev.rx_room() == 1
    assert uart.dev.receive(b"ab") == 1
    assert uart.r(LSR) & 0x03 == 0x03  # data ready + overrun
    assert uart.r(LSR) & 0x02 == 0  # overrun clears on read
    assert uart.r(RBR) == ord("a")
    assert uart.r(LSR) & 0x01 == 0


def test_receive_interrupt_and_fifo(uart: Uart) -> None:
    uart.w(FCR, 0xC7)  # FIFO on, clear, trigger level 14
    uart.w(IER, 0x01)
    assert uart.dev.rx_room() == 16
    assert uart.dev.receive(b"abc") == 3
    assert uart.irq
    assert uart.r(IIR) == 0xCC  # below the trigger: character timeout
    assert uart.dev.receive(b"d" * 11) == 11
    assert uart.r(IIR) == 0xC4  # at the trigger level: data available
    got = bytes(uart.r(RBR) for _ in range(14))
    assert got == b"abc" + b"d" * 11
    assert not uart.irq
    assert uart.r(IIR) == 0xC1


def test_fifo_overrun_sets_oe_and_line_status_interrupt(uart: Uart) -> None:
    uart.w(FCR, 0x01)
    uart.w(IER, 0x05)  # RDI + RLSI
    assert uart.dev.receive(b"x" * 20) == 16
    assert uart.r(IIR) & 0x0F == 0x06  # line status has the highest priority
    assert uart.r(LSR) & 0x02
    assert uart.r(IIR) & 0x0F == 0x04


def test_fifo_clear(uart: Uart) -> None:
    uart.w(FCR, 0x01)
    uart.dev.receive(b"abc")
    uart.w(FCR, 0x03)
    assert uart.r(LSR) & 0x01 == 0


def test_loopback_transmit_is_received(uart: Uart) -> None:
    uart.w(MCR, 0x10)
    uart.w(THR, 0x42)
    assert uart.out == b""
    assert uart.r(LSR) & 0x01
    assert uart.r(RBR) == 0x42
    assert uart.dev.receive(b"z") == 0  # line input disconnected in loopback


def test_modem_status_interrupt_in_loopback(uart: Uart) -> None:
    uart.w(IER, 0x08)
    uart.w(MCR, 0x10 | 0x01)  # loop + DTR -> DSR; CTS and DCD drop
    assert uart.r(IIR) & 0x0F == 0x00
    msr = uart.r(MSR)
    assert msr & 0xF0 == 0x20 and msr & 0x0F
    assert uart.r(MSR) & 0x0F == 0  # deltas clear on read
    assert uart.r(IIR) == 0x01


def test_wide_access_touches_consecutive_registers(uart: Uart) -> None:
    uart.w(SCR, 0x11)
    assert uart.dev.read(6, 2)[1] == 0x11


def test_com1_constants() -> None:
    assert (serial.COM1_PORT, serial.COM1_IRQ, serial.PORT_COUNT) == (0x3F8, 4, 8)


def test_a_slow_line_holds_the_transmitter_busy() -> None:
    """When the host's output buffer has less than a FIFO's worth of room,
    THRE and TEMT read clear until the host says it drained; then the THRE
    interrupt comes, as Linux's interrupt-driven transmit waits for."""
    uart = Uart(room=20)
    uart.w(IER, 0x02)  # THRI
    assert uart.r(IIR) & 0x0F == 0x02  # enabling THRI with THR empty interrupts
    for c in b"0123":
        uart.w(THR, c)
    assert uart.r(LSR) & 0x60 == 0x60  # 16 bytes of room left: still empty
    uart.w(THR, ord("4"))
    assert uart.r(LSR) & 0x60 == 0  # 15 left: busy
    assert uart.r(IIR) & 0x0F == 0x01  # and no THRE interrupt
    uart.dev.tx_ready()  # nothing drained yet: still busy
    assert uart.r(LSR) & 0x60 == 0
    del uart.out[:]  # the host wrote it all out
    uart.dev.tx_ready()
    assert uart.r(LSR) & 0x60 == 0x60
    assert uart.irq and uart.r(IIR) & 0x0F == 0x02


def test_bytes_written_with_no_room_at_all_are_counted_and_lost() -> None:
    uart = Uart(room=2)
    for c in b"abcd":
        uart.w(THR, c)
    assert uart.out == b"ab"
    assert uart.dev.tx_dropped == 2


def test_state_round_trip() -> None:
    a = Uart()
    a.w(LCR, 0x83)
    a.w(DLL, 0x01)
    a.w(LCR, 0x03)
    a.w(FCR, 0xC1)
    a.w(IER, 0x01)
    a.w(MCR, 0x0B)
    a.w(SCR, 0x5A)
    a.dev.receive(b"xyz")
    state = a.dev.state()
    b = Uart()
    b.dev.restore(state)
    assert b.dev.state() == state
    assert [b.r(RBR) for _ in range(3)] == list(b"xyz")
    assert b.r(SCR) == 0x5A and b.r(LCR) == 0x03


@pytest.mark.parametrize(
    "change",
    [{"ier": 0x100}, {"rx": "zz"}, {"rx": "00" * 17}, {"lcr": -1}, {"fifo_enabled": "yes"}],
)
def test_bad_state_is_refused_whole(change: dict[str, object]) -> None:
    a = Uart()
    before = a.dev.state()
    with pytest.raises(ValueError):
        a.dev.restore({**before, **change})
    assert a.dev.state() == before
