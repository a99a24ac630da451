"""A 16550A UART, as Linux's 8250 driver finds and drives it.

Register map, bits and interrupt priorities follow the 16550 datasheet
(TI/National PC16550D). Transmission is instantaneous: a byte written to THR
goes straight to the output callback, so THR and the shifter are always
empty again by the time the guest looks. Received bytes wait in the 16-byte
FIFO until the guest reads them; the host side learns how much room there is
from :meth:`Serial16550.rx_room` and never overruns the guest unless it
ignores that.

The interrupt output is level-sensitive: ``irq(level)`` is called whenever
the level changes, and the machine drives an ISA line (IRQ 4 for COM1) with
it, so each new reason to interrupt produces a fresh rising edge.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

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


class Serial16550:
    """One UART. ``out`` receives transmitted bytes; ``irq`` the interrupt level."""

    def __init__(
        self,
        out: Callable[[bytes], None],
        irq: Callable[[bool], None] = lambda level: None,
        rx_space: threading.Event | None = None,
    ) -> None:
        self._out = out
        self._irq = irq
        #: Set whenever the guest makes room in the receive FIFO.
        self.rx_space = rx_space if rx_space is not None else threading.Event()
        self._lock = threading.Lock()
        self.reset()

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

    # -- host side -------------------------------------------------------

    def rx_room(self) -> int:
        """How many bytes :meth:`receive` would accept now."""
        with self._lock:
            return self._rx_capacity() - len(self.rx)

    def listening(self) -> bool:
        """Whether a driver has the port open for input: FIFOs on, the
        received-data interrupt enabled and OUT2 letting it reach the
        interrupt line, out of loopback. Linux's 8250 driver probes IER with
        OUT2 low, and while opening the port enables RDI just before it turns
        the FIFOs on, which by the datasheet clears them; a host that holds
        input until all of this is true loses none of it."""
        with self._lock:
            return bool(
                self.fifo_enabled
                and self.ier & IER_RDI
                and self.mcr & MCR_OUT2
                and not self.mcr & MCR_LOOP
            )

    def receive(self, data: bytes) -> int:
        """Bytes arriving on the line; returns how many fit (the rest would overrun)."""
        with self._lock:
            if self.mcr & MCR_LOOP:  # in loopback the line input is disconnected
                return 0
            taken = self._push_rx(data)
            self._update_irq()
            return taken

    # -- guest side ------------------------------------------------------

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            data = bytes(self._read_reg(offset + i) for i in range(size))
            self._update_irq()
            return data

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
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
        else:
            self._out(bytes([value]))
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
            self._irq(level)
