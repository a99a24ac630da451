"""A 16550A UART, as Linux's 8250 driver finds and drives it.

Register map, bits and interrupt priorities follow the 16550 datasheet
(TI/National PC16550D). A byte written to THR goes straight to the output
callback. The host side's output has a bounded buffer, and ``tx_room`` says
how much of it is free: while less than a transmit FIFO's worth is, the
transmitter reads as busy (LSR.THRE and TEMT clear), as on a slow line, and
the host calls :meth:`Serial16550.tx_ready` once the buffer drains, which
raises the THRE interrupt a driver waits for. A guest that writes while the
transmitter is busy loses the byte, as with a real UART; ``tx_dropped``
counts them. Received bytes wait in the 16-byte FIFO until the guest reads
them; the host side learns how much room there is from
:meth:`Serial16550.rx_room` and never overruns the guest unless it ignores
that.

The interrupt output is level-sensitive: ``irq_line(level)`` is called whenever
the level changes, and the machine drives an ISA line (IRQ 4 for COM1) with
it, so each new reason to interrupt produces a fresh rising edge.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import ClassVar

from pyvmm.devices.device import DeviceModel, Resources, State, fields, hex_bytes

# Register offsets (datasheet table "Register Addresses"); DLAB is LCR bit 7.
RBR_THR_DLL = 0  # receive buffer (read) / transmit holding (write) / divisor low
IER_DLM = 1  # interrupt enable / divisor high
IIR_FCR = 2  # interrupt identification (read) / FIFO control (write)
LCR = 3  # line control
MCR = 4  # modem control
LSR = 5  # line status
MSR = 6  # modem status
SCR = 7  # scratch

IER_RDI = 0x01  # received data available
IER_THRI = 0x02  # transmitter holding register empty
IER_RLSI = 0x04  # receiver line status
IER_MSI = 0x08  # modem status
IER_MASK = 0x0F  # bits 4-7 are always 0 on a 16550A

IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_RX_TIMEOUT = 0x0C
IIR_FIFO_ENABLED = 0xC0  # bits 7-6 read 11 when FIFOs are on

FCR_ENABLE_FIFO = 0x01
FCR_CLEAR_RCVR = 0x02
FCR_CLEAR_XMIT = 0x04
FCR_TRIGGER_SHIFT = 6
RX_TRIGGER_LEVELS = (1, 4, 8, 14)  # FCR bits 7-6

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01  # data ready
LSR_OE = 0x02  # overrun error
LSR_BI = 0x10  # break interrupt
LSR_THRE = 0x20  # transmitter holding register empty
LSR_TEMT = 0x40  # transmitter empty
LSR_ERRORS = 0x1E  # OE, PE, FE, BI: cleared by reading LSR

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_DELTAS = 0x0F

FIFO_SIZE = 16
#: Modem inputs when not in loopback: a cable with carrier, ready to send.
MSR_CONNECTED = MSR_DCD | MSR_DSR | MSR_CTS

# Standard PC addresses and lines of the four COM ports.
COM1_PORT, COM1_IRQ = 0x3F8, 4
PORT_COUNT = 8


def _unbounded() -> int:
    return 1 << 30


class Serial16550(DeviceModel):
    """One UART at ``port`` with ISA interrupt ``isa_irq``. ``out`` receives
    transmitted bytes; ``tx_room`` says how many more the host can take now."""

    name = "COM1"

    def __init__(
        self,
        out: Callable[[bytes], None],
        tx_room: Callable[[], int] = _unbounded,
        port: int = COM1_PORT,
        isa_irq: int = COM1_IRQ,
    ) -> None:
        super().__init__()
        self._out = out
        self._tx_room = tx_room
        self._port = port
        self._isa_irq = isa_irq
        #: Set whenever the guest makes room in the receive FIFO.
        self.rx_space = threading.Event()
        #: Bytes the guest wrote while the transmitter was busy (lost).
        self.tx_dropped = 0
        self.reset()

    def resources(self) -> Resources:
        return Resources(ports=(self._port, PORT_COUNT), isa_irq=self._isa_irq)

    def coalesced(self) -> tuple[tuple[int, int], ...]:
        """THR: Linux's 8250 driver writes a FIFO's worth after each THRE
        interrupt without reading in between; each byte need not exit."""
        return ((RBR_THR_DLL, 1),)

    def reset(self) -> None:
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.lsr = LSR_THRE | LSR_TEMT
        self.msr = MSR_CONNECTED
        self.scr = 0
        self.dll = 0x0C  # 9600 baud with the PC's 1.8432 MHz clock
        self.dlm = 0
        self.fifo_enabled = False
        self.rx_trigger = 1
        self.rx: deque[int] = deque()
        self.thr_ipending = False
        self._irq_level = False

    # -- saved state -----------------------------------------------------

    #: Saved registers and the range each may hold.
    _REGS: ClassVar[dict[str, tuple[int, int]]] = {
        "ier": (0, IER_MASK), "lcr": (0, 0xFF), "mcr": (0, MCR_MASK), "lsr": (0, 0xFF),
        "msr": (0, 0xFF), "scr": (0, 0xFF), "dll": (0, 0xFF), "dlm": (0, 0xFF),
        "fifo_enabled": (0, 1), "rx_trigger": (1, FIFO_SIZE), "thr_ipending": (0, 1),
        "irq_level": (0, 1),
    }  # fmt: skip

    def state(self) -> State:
        with self.lock:
            return {
                **{name: int(getattr(self, name)) for name in self._REGS if name != "irq_level"},
                "irq_level": int(self._irq_level),
                "rx": bytes(self.rx).hex(),
            }

    def restore(self, state: State) -> None:
        values = fields(state, self._REGS)
        rx = hex_bytes(state, "rx", FIFO_SIZE)
        with self.lock:
            for name, value in values.items():
                if name == "irq_level":
                    self._irq_level = bool(value)
                elif name in ("fifo_enabled", "thr_ipending"):
                    setattr(self, name, bool(value))
                else:
                    setattr(self, name, value)
            self.rx = deque(rx)
        self.tx_ready()  # this side's output may have room that the saved one had not

    # -- host side -------------------------------------------------------

    def rx_room(self) -> int:
        """How many bytes :meth:`receive` would accept now."""
        with self.lock:
            return self._rx_capacity() - len(self.rx)

    def listening(self) -> bool:
        """Whether a driver has the port open for input: FIFOs on, the
        received-data interrupt enabled and OUT2 letting it reach the
        interrupt line, out of loopback. Linux's 8250 driver probes IER with
        OUT2 low, and while opening the port enables RDI just before it turns
        the FIFOs on, which by the datasheet clears them; a host that holds
        input until all of this is true loses none of it."""
        with self.lock:
            return bool(
                self.fifo_enabled
                and self.ier & IER_RDI
                and self.mcr & MCR_OUT2
                and not self.mcr & MCR_LOOP
            )

    def receive(self, data: bytes) -> int:
        """Bytes arriving on the line; returns how many fit (the rest would overrun)."""
        with self.lock:
            if self.mcr & MCR_LOOP:  # in loopback the line input is disconnected
                return 0
            taken = self._push_rx(data)
            self._update_irq()
            return taken

    def tx_ready(self) -> None:
        """The host's output buffer has room again: the transmitter empties."""
        with self.lock:
            if self.lsr & LSR_THRE or self._tx_room() < FIFO_SIZE:
                return
            self.lsr |= LSR_THRE | LSR_TEMT
            if self.ier & IER_THRI:
                self.thr_ipending = True
            self._update_irq()

    # -- guest side (the bus holds the lock) ------------------------------

    def read(self, offset: int, size: int) -> bytes:
        if size == 1:
            data = bytes((self._read_reg(offset),))
        else:
            data = bytes(self._read_reg(offset + i) for i in range(size))
        self._update_irq()
        return data

    def write(self, offset: int, data: bytes) -> None:
        if len(data) == 1:
            self._write_reg(offset, data[0])
        else:
            for i, value in enumerate(data):
                self._write_reg(offset + i, value)
        self._update_irq()

    # -- registers -------------------------------------------------------

    def _read_reg(self, reg: int) -> int:
        if reg == RBR_THR_DLL:
            if self.lcr & LCR_DLAB:
                return self.dll
            value = self.rx.popleft() if self.rx else 0
            if not self.rx:
                self.lsr &= ~LSR_DR
            self.rx_space.set()
            return value
        if reg == IER_DLM:
            return self.dlm if self.lcr & LCR_DLAB else self.ier
        if reg == IIR_FCR:
            iir = self._pending()
            if iir == IIR_THRI:
                self.thr_ipending = False  # reading IIR acknowledges THRE
            return iir | (IIR_FIFO_ENABLED if self.fifo_enabled else 0)
        if reg == LCR:
            return self.lcr
        if reg == MCR:
            return self.mcr
        if reg == LSR:
            value = self.lsr
            self.lsr &= ~LSR_ERRORS
            return value
        if reg == MSR:
            value = self.msr
            self.msr &= ~MSR_DELTAS
            return value
        if reg == SCR:
            return self.scr
        return 0xFF  # beyond the 8 registers: only reachable by a wide access

    def _write_reg(self, reg: int, value: int) -> None:
        if reg == RBR_THR_DLL:
            if self.lcr & LCR_DLAB:
                self.dll = value
            else:
                self._transmit(value)
        elif reg == IER_DLM:
            if self.lcr & LCR_DLAB:
                self.dlm = value
            else:
                enabling_thri = value & IER_THRI and not self.ier & IER_THRI
                self.ier = value & IER_MASK
                if self.ier & IER_RDI:
                    self.rx_space.set()  # a driver now listens: input may flow
                if enabling_thri and self.lsr & LSR_THRE:
                    self.thr_ipending = True  # enabling THRI with THR empty interrupts
                elif not self.ier & IER_THRI:
                    self.thr_ipending = False
        elif reg == IIR_FCR:
            self._write_fcr(value)
        elif reg == LCR:
            self.lcr = value
        elif reg == MCR:
            self._write_mcr(value & MCR_MASK)
        elif reg == SCR:
            self.scr = value
        # LSR and MSR are read-only; writes to them are ignored.

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE_FIFO)
        if enable != self.fifo_enabled:
            self.rx.clear()  # changing the FIFO mode resets both FIFOs
            self.lsr &= ~LSR_DR
        self.fifo_enabled = enable
        if value & FCR_CLEAR_RCVR:
            self.rx.clear()
            self.lsr &= ~LSR_DR
        self.rx_trigger = RX_TRIGGER_LEVELS[value >> FCR_TRIGGER_SHIFT & 3]
        self.rx_space.set()  # the FIFO's size or contents changed

    def _write_mcr(self, value: int) -> None:
        self.rx_space.set()  # input may start or stop flowing
        self.mcr = value
        if value & MCR_LOOP:
            # Loopback: the modem outputs drive the modem inputs.
            new = (
                (MSR_CTS if value & MCR_RTS else 0)
                | (MSR_DSR if value & MCR_DTR else 0)
                | (MSR_RI if value & MCR_OUT1 else 0)
                | (MSR_DCD if value & MCR_OUT2 else 0)
            )
        else:
            new = MSR_CONNECTED
        old = self.msr
        deltas = 0
        if (old ^ new) & MSR_CTS:
            deltas |= MSR_DCTS
        if (old ^ new) & MSR_DSR:
            deltas |= MSR_DDSR
        if old & MSR_RI and not new & MSR_RI:
            deltas |= MSR_TERI  # trailing edge only
        if (old ^ new) & MSR_DCD:
            deltas |= MSR_DDCD
        self.msr = new | (old & MSR_DELTAS) | deltas

    def _transmit(self, value: int) -> None:
        self.thr_ipending = False
        self._update_irq()  # drop the line, so the THRE below is a new edge
        if self.mcr & MCR_LOOP:
            self._push_rx(bytes([value]))
        elif self._tx_room() > 0:
            self._out(bytes([value]))
            if self._tx_room() < FIFO_SIZE:
                # The line is slow: the transmitter stays busy until tx_ready().
                self.lsr &= ~(LSR_THRE | LSR_TEMT)
                return
        else:
            self.tx_dropped += 1
            return
        if self.ier & IER_THRI:
            self.thr_ipending = True

    def _rx_capacity(self) -> int:
        return FIFO_SIZE if self.fifo_enabled else 1

    def _push_rx(self, data: bytes) -> int:
        room = self._rx_capacity() - len(self.rx)
        taken = data[: max(room, 0)]
        self.rx.extend(taken)
        if len(taken) < len(data):
            self.lsr |= LSR_OE
        if self.rx:
            self.lsr |= LSR_DR
        return len(taken)

    # -- interrupts ------------------------------------------------------

    def _pending(self) -> int:
        """The highest-priority pending interrupt, as IIR bits 3-0."""
        if self.ier & IER_RLSI and self.lsr & LSR_ERRORS:
            return IIR_RLSI
        if self.ier & IER_RDI and self.rx:
            if not self.fifo_enabled or len(self.rx) >= self.rx_trigger:
                return IIR_RDI
            # Below the trigger level the FIFO's character timeout reports it;
            # pyvmm lets that timeout expire at once.
            return IIR_RX_TIMEOUT
        if self.ier & IER_THRI and self.thr_ipending:
            return IIR_THRI
        if self.ier & IER_MSI and self.msr & MSR_DELTAS:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        level = self._pending() != IIR_NO_INT
        if level != self._irq_level:
            self._irq_level = level
            self.irq_line(level)
