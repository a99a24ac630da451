"""The I/O bus and the i8042 controller."""

from __future__ import annotations

import pytest

from pyvmm.devices.bus import Bus
from pyvmm.devices.device import DeviceModel
from pyvmm.devices.i8042 import I8042


class Recorder(DeviceModel):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[int, bytes]] = []

    def read(self, offset: int, size: int) -> bytes:
        return bytes([offset]) * size

    def write(self, offset: int, data: bytes) -> None:
        self.writes.append((offset, data))


def test_bus_dispatches_offsets() -> None:
    bus = Bus("pio")
    dev = Recorder()
    bus.insert(0x3F8, 8, dev)
    assert bus.read(0x3FA, 1) == b"\x02"
    bus.write(0x3FF, b"\x07")
    assert dev.writes == [(7, b"\x07")]


def test_unclaimed_reads_all_ones_and_writes_vanish() -> None:
    bus = Bus("pio")
    dev = Recorder()
    bus.insert(0x3F8, 8, dev)
    assert bus.read(0x80, 1) == b"\xff"
    assert bus.read(0xCFC, 4) == b"\xff\xff\xff\xff"
    assert bus.read(0x3FF, 2) == b"\xff\xff"  # runs past the device: nobody claims it all
    bus.write(0x3F7, b"\x01\x02")
    assert dev.writes == []


def test_overlapping_ranges_are_refused() -> None:
    bus = Bus("pio")
    bus.insert(0x3F8, 8, Recorder())
    bus.insert(0x3F0, 8, Recorder())  # adjacent is fine
    for base, length in ((0x3FF, 1), (0x3F0, 0x20), (0x3F4, 2)):
        with pytest.raises(ValueError):
            bus.insert(base, length, Recorder())


class Box:
    def __init__(self) -> None:
        self.resets = 0
        self.dev = I8042(on_reset=self.reset)

    def reset(self) -> None:
        self.resets += 1

    def cmd(self, value: int) -> None:
        self.dev.write(4, bytes([value]))

    def data(self, value: int | None = None) -> int:
        if value is None:
            return self.dev.read(0, 1)[0]
        self.dev.write(0, bytes([value]))
        return 0

    def status(self) -> int:
        return self.dev.read(4, 1)[0]


def test_reset_command() -> None:
    box = Box()
    assert box.status() & 0x02 == 0  # input buffer empty: ready for a command
    box.cmd(0xFE)
    assert box.resets == 1


def test_reset_through_the_output_port() -> None:
    box = Box()
    box.cmd(0xD1)
    box.data(0x03)  # reset line high: nothing happens
    assert box.resets == 0
    box.cmd(0xD1)
    box.data(0x02)
    assert box.resets == 1


def test_self_test_and_configuration_byte() -> None:
    box = Box()
    box.cmd(0xAA)
    assert box.status() & 0x01
    assert box.data() == 0x55
    assert box.status() & 0x01 == 0
    box.cmd(0x60)
    box.data(0x47)
    box.cmd(0x20)
    assert box.data() == 0x47
    box.cmd(0xAD)
    box.cmd(0x20)
    assert box.data() & 0x10
    assert box.resets == 0


def test_other_ports_in_the_range_read_all_ones() -> None:
    assert Box().dev.read(2, 1) == b"\xff"


def test_the_bus_holds_the_device_lock_around_each_access() -> None:
    seen: list[bool] = []

    class Probe(Recorder):
        def read(self, offset: int, size: int) -> bytes:
            seen.append(self.lock.locked())
            return bytes(size)

    bus = Bus("pio")
    dev = Probe()
    bus.insert(0x100, 4, dev)
    bus.read(0x101, 1)
    assert seen == [True] and not dev.lock.locked()


def test_i8042_state_round_trip() -> None:
    a = I8042(on_reset=lambda: None)
    a.write(4, b"\x60")  # write the configuration byte next
    a.write(0, b"\x45")
    a.write(4, b"\x20")  # read it: now waiting at the data port
    b = I8042(on_reset=lambda: None)
    b.restore(a.state())
    assert b.state() == a.state()
    assert b.read(0, 1) == b"\x45"
    with pytest.raises(ValueError):
        b.restore({**a.state(), "ctr": 300})
