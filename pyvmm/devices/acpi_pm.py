"""The ACPI PM1 event and control registers: how the guest powers off.

The FADT built by :mod:`pyvmm.arch.x86_64.acpi` points the guest here. To
power off, Linux writes the \\_S5 sleep type with SLP_EN to PM1 control
(ACPI 6.5, 4.8.3.2 and 7.4.2); pyvmm then ends the VM. Other sleep states are
not offered (the DSDT names only \\_S5), so other writes change nothing.
SCI_EN reads as set (ACPI mode is always on); no event is ever pending, so
the status register reads as zero and the SCI never fires.
"""

from __future__ import annotations

from collections.abc import Callable

from pyvmm.arch.x86_64.acpi import (
    PM1_CNT_LEN,
    PM1_EVT_LEN,
    PM1_SCI_EN,
    S5_SLEEP_TYPE,
    SLEEP_ENABLE,
    SLEEP_TYPE_MASK,
    SLEEP_TYPE_SHIFT,
)
from pyvmm.devices.device import DeviceModel, Resources, State, hex_bytes

#: I/O ports of the blocks (free on a PC; the FADT names them): PM1 status
#: and enable (2 bytes each), then PM1 control.
EVT_PORT = 0x600
CNT_PORT = EVT_PORT + PM1_EVT_LEN
PORT_COUNT = PM1_EVT_LEN + PM1_CNT_LEN
_ENABLE = 2  # offset of PM1_EN in the event block
_CNT = PM1_EVT_LEN  # offset of PM1_CNT from EVT_PORT


class AcpiPm(DeviceModel):
    """Calls ``on_poweroff`` when the guest enters S5 (soft off)."""

    name = "ACPI PM1"

    def __init__(self, on_poweroff: Callable[[], None]) -> None:
        super().__init__()
        self._on_poweroff = on_poweroff
        self._regs = bytearray(PORT_COUNT)  # PM1_STS, PM1_EN, PM1_CNT
        self._regs[_CNT] = PM1_SCI_EN

    def resources(self) -> Resources:
        return Resources(ports=(EVT_PORT, PORT_COUNT))

    def fadt(self) -> dict[str, int]:
        """The FADT's PM1a event and control blocks are these ports."""
        return {"pm1_evt_port": EVT_PORT, "pm1_cnt_port": CNT_PORT}

    def state(self) -> State:
        with self.lock:
            return {"regs": self._regs.hex()}

    def restore(self, state: State) -> None:
        regs = hex_bytes(state, "regs", PORT_COUNT)
        if len(regs) != PORT_COUNT:
            raise ValueError("ACPI PM1 state has the wrong length")
        with self.lock:
            self._regs[:] = regs

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self._regs[offset : offset + size])

    def write(self, offset: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            reg = offset + i
            if reg < _ENABLE:
                continue  # PM1_STS: write 1 to clear; nothing is ever set
            self._regs[reg] = byte
        self._regs[_CNT] |= PM1_SCI_EN
        cnt = int.from_bytes(self._regs[_CNT:], "little")
        # SLP_EN is write-only: it triggers the transition and reads as 0.
        self._regs[_CNT + 1] &= ~(SLEEP_ENABLE >> 8) & 0xFF
        wrote_high_byte = offset <= _CNT + 1 < offset + len(data)
        sleep_type = (cnt & SLEEP_TYPE_MASK) >> SLEEP_TYPE_SHIFT
        if wrote_high_byte and cnt & SLEEP_ENABLE and sleep_type == S5_SLEEP_TYPE:
            self._on_poweroff()
