"""The CMOS real-time clock (MC146818) at ports 0x70 (index) and 0x71 (data).

Linux reads the wall-clock time from it at boot (drivers/rtc/rtc-mc146818-lib.c)
and, without it, spins waiting for an "update in progress" bit that an empty
bus reports as always set. Register layout from the MC146818A datasheet: time
and date in registers 0x00-0x09, status registers A-D at 0x0A-0x0D, then
battery-backed RAM. The clock is the host's UTC time, read on each access; it
reports BCD in 24-hour mode, as a PC BIOS leaves it. Writes to the time are
accepted and ignored, alarms and periodic interrupts are not provided.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pyvmm.devices.device import DeviceModel, Resources, State, fields, hex_bytes

INDEX_PORT = 0x70
PORT_COUNT = 2
#: The RTC's ISA interrupt (not raised: no alarms or periodic interrupts).
RTC_IRQ = 8

REG_SECONDS = 0x00
REG_MINUTES = 0x02
REG_HOURS = 0x04
REG_WEEKDAY = 0x06
REG_DAY = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09
REG_A = 0x0A  # bit 7: update in progress; bits 6-4: divider (010 = 32.768 kHz)
REG_B = 0x0B  # bit 2: binary (else BCD); bit 1: 24-hour mode
REG_C = 0x0C  # interrupt flags, cleared on read
REG_D = 0x0D  # bit 7: valid RAM and time (battery good)
REG_CENTURY = 0x32  # where PC BIOSes keep the century (ACPI FADT "century")

A_DIVIDER_32KHZ = 0x20
B_24_HOUR = 0x02
D_VALID = 0x80
NMI_DISABLE = 0x80  # bit 7 of the index port masks NMIs, not part of the index
RAM_SIZE = 128


def _bcd(value: int) -> int:
    return (value // 10) << 4 | value % 10


class CmosRtc(DeviceModel):
    """The clock and its 128 bytes of CMOS RAM. ``now`` returns a UTC struct_time."""

    name = "CMOS RTC"

    def __init__(self, now: Callable[[], time.struct_time] = time.gmtime) -> None:
        super().__init__()
        self._now = now
        self.index = 0
        self.ram = bytearray(RAM_SIZE)
        self.ram[REG_A] = A_DIVIDER_32KHZ
        self.ram[REG_B] = B_24_HOUR
        self.ram[REG_D] = D_VALID

    def resources(self) -> Resources:
        return Resources(ports=(INDEX_PORT, PORT_COUNT), isa_irq=RTC_IRQ)

    def state(self) -> State:
        """The index and RAM; the clock is the host's, so it needs no saving."""
        with self.lock:
            return {"index": self.index, "ram": self.ram.hex()}

    def restore(self, state: State) -> None:
        index = fields(state, {"index": (0, RAM_SIZE - 1)})["index"]
        ram = hex_bytes(state, "ram", RAM_SIZE)
        if len(ram) != RAM_SIZE:
            raise ValueError("CMOS state has the wrong length")
        with self.lock:
            self.index = index
            self.ram[:] = ram

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self._read_byte(offset + i) for i in range(size))

    def write(self, offset: int, data: bytes) -> None:
        for i, value in enumerate(data):
            if offset + i == 0:
                self.index = value & ~NMI_DISABLE & (RAM_SIZE - 1)
            elif offset + i == 1 and self.index not in _CLOCK_REGS and self.index != REG_D:
                self.ram[self.index] = value

    def _read_byte(self, offset: int) -> int:
        if offset != 1:
            return 0xFF  # the index port is write-only
        reg = self.index
        if reg in _CLOCK_REGS:
            t = self._now()
            value = {
                REG_SECONDS: min(t.tm_sec, 59),
                REG_MINUTES: t.tm_min,
                REG_HOURS: t.tm_hour,
                REG_WEEKDAY: (t.tm_wday + 1) % 7 + 1,  # 1 = Sunday
                REG_DAY: t.tm_mday,
                REG_MONTH: t.tm_mon,
                REG_YEAR: t.tm_year % 100,
                REG_CENTURY: t.tm_year // 100,
            }[reg]
            return value if self.ram[REG_B] & 0x04 else _bcd(value)
        value = self.ram[reg]
        if reg == REG_C:
            self.ram[REG_C] = 0
        return value


_CLOCK_REGS = frozenset(
    {REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR, REG_CENTURY}
)
