"""Hostile guests, device side: random port-I/O and MMIO traffic of every
size, through the buses wired exactly as a Machine wires them.

Nothing here may raise: a guest chooses every port, address, size and value.
Hypothesis draws the sequences; ``--hypothesis-show-statistics`` reports how
many ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.devices import acpi_pm, cmos, i8042, pvpanic, serial
from pyvmm.devices.bus import Bus
from pyvmm.kvm import ffi
from pyvmm.vmm.device_manager import DeviceManager, PcEvents, add_pc_devices
from pyvmm.vmm.exits import mmio_access, port_io

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Port ranges with a device behind them; the fuzzer aims near them as often
#: as anywhere else, so that every register is hit.
DEVICE_PORTS = [
    (serial.COM1_PORT, serial.PORT_COUNT),
    (i8042.DATA_PORT, i8042.PORT_SPAN),
    (cmos.INDEX_PORT, cmos.PORT_COUNT),
    (pvpanic.PORT, pvpanic.PORT_COUNT),
    (acpi_pm.EVT_PORT, acpi_pm.PORT_COUNT),
]
ENDINGS = {"reset", "poweroff", "panic"}


@dataclass
class Rig:
    """The machine's port-I/O and MMIO buses with a recording host side."""

    pio: Bus = field(default_factory=lambda: Bus("port I/O"))
    mmio: Bus = field(default_factory=lambda: Bus("MMIO"))
    console: bytearray = field(default_factory=bytearray)
    irq_levels: list[tuple[int, bool]] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    com1: serial.Serial16550 | None = None

    def __post_init__(self) -> None:
        manager = DeviceManager(
            self.pio, self.mmio, lambda irq, level: self.irq_levels.append((irq, level))
        )
        events = PcEvents(
            reset=lambda: self.stops.append("reset"),
            poweroff=lambda: self.stops.append("poweroff"),
            panic=lambda: self.stops.append("panic"),
        )
        self.com1 = add_pc_devices(manager, self.console.extend, lambda: 1 << 30, events)

    def claimed(self, port: int, size: int) -> bool:
        return self.pio.find(port, size) is not None


ports = st.one_of(
    st.sampled_from(DEVICE_PORTS).flatmap(
        lambda r: st.integers(max(r[0] - 4, 0), min(r[0] + r[1] + 4, 0xFFFF))
    ),
    st.integers(0, 0xFFFF),
)


@st.composite
def port_ops(draw: st.DrawFn) -> tuple[str, int, int, int, bytes]:
    """One exit: ("in"|"out"|"rx", port, size, count, data). "rx" is the
    host typing into COM1 between exits."""
    kind = draw(st.sampled_from(["in", "out", "out", "rx"]))
    size = draw(st.sampled_from([1, 2, 4]))
    count = draw(st.one_of(st.just(1), st.integers(1, 64)))  # rep ins / rep outs
    data = draw(st.binary(min_size=size * count, max_size=size * count))
    return kind, draw(ports), size, count, data


@FUZZ
@given(st.lists(port_ops(), max_size=200))
def test_port_io_from_a_hostile_guest(ops: list[tuple[str, int, int, int, bytes]]) -> None:
    rig = Rig()
    assert rig.com1 is not None
    page = memoryview(bytearray(4096))
    offset = 0x1000 - 0x200  # where kvm_run's I/O data would be
    for kind, port, size, count, data in ops:
        if kind == "rx":
            taken = rig.com1.receive(data)
            assert 0 <= taken <= len(data)
            continue
        end = offset + size * count
        before = bytes(page)
        if kind == "out":
            page[offset:end] = data
            port_io(rig.pio, True, port, size, count, page, offset)
            assert page[offset:end] == data  # an OUT leaves its data alone
        else:
            port_io(rig.pio, False, port, size, count, page, offset)
            if not rig.claimed(port, size):
                assert page[offset:end] == b"\xff" * (size * count)  # an empty bus
        # Nothing outside the data area changes.
        assert page[:offset] == before[:offset] and page[end:] == before[end:]
        assert 0 <= rig.com1.rx_room() <= serial.FIFO_SIZE
    assert all(irq == serial.COM1_IRQ for irq, _ in rig.irq_levels)
    assert set(rig.stops) <= ENDINGS


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from([serial.COM1_PORT + i for i in range(serial.PORT_COUNT)]),
            st.integers(0, 255),
        ),
        max_size=300,
    )
)
def test_uart_transmits_exactly_what_the_guest_sends(writes: list[tuple[int, int]]) -> None:
    """Whatever else the guest does to the UART's registers, the console gets
    each byte written to THR (DLAB clear, not in loopback) and nothing else."""
    rig = Rig()
    expected = bytearray()
    lcr = mcr = 0
    for port, value in writes:
        reg = port - serial.COM1_PORT
        if reg == 0 and not lcr & 0x80 and not mcr & 0x10:  # LCR.DLAB, MCR.LOOP
            expected.append(value)
        elif reg == 3:
            lcr = value
        elif reg == 4:
            mcr = value
        rig.pio.write(port, bytes([value]))
    assert rig.console == expected


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.sampled_from([1, 2, 4])), max_size=300))
def test_reads_never_change_what_the_host_sees(reads: list[tuple[int, int]]) -> None:
    """Reads alone never end the VM or print anything (only a write can)."""
    rig = Rig()
    for port, size in reads:
        assert len(rig.pio.read(port, size)) == size
    assert rig.console == b"" and rig.stops == []


@st.composite
def mmio_exits(draw: st.DrawFn) -> tuple[int, int, bool, bytes]:
    addr = draw(
        st.one_of(
            st.integers(0, (1 << 64) - 1),
            st.integers(0xC000_0000, 0xFFFF_FFFF),  # the 32-bit MMIO gap
        )
    )
    length = draw(st.integers(0, 255))  # KVM says 1-8; a wrong length must not hurt either
    return addr, length, draw(st.booleans()), draw(st.binary(min_size=8, max_size=8))


@FUZZ
@given(st.lists(mmio_exits(), max_size=100))
def test_mmio_from_a_hostile_guest(exits: list[tuple[int, int, bool, bytes]]) -> None:
    """MMIO exits to addresses nothing claims read as all-ones, through the
    same kvm_run structure KVM fills in."""
    rig = Rig()
    run = ffi.new("struct kvm_run *")
    for addr, length, is_write, data in exits:
        run.mmio.phys_addr = addr
        run.mmio.len = length
        run.mmio.is_write = is_write
        for i in range(8):
            run.mmio.data[i] = data[i]
        mmio_access(rig.mmio, run.mmio)
        shown = bytes(run.mmio.data[0:8])
        if is_write:
            assert shown == data
        else:
            n = min(length, 8)
            assert shown[:n] == b"\xff" * n and shown[n:] == data[n:]
    assert rig.stops == []
