"""The device table: every device model, where it lives, and what the guest
is told about it.

Devices are added before anything is written into the guest. Each declares
what it needs (:class:`pyvmm.devices.device.Resources`); the manager puts it
on the port-I/O bus at its fixed ports or gives it the next page of the
MMIO device window (``layout.MMIO_WINDOW_*``), gives it its ISA interrupt or
the next free GSI from ``layout.GSI_ALLOC_FIRST``, and tells it where it
ended up. Once all are placed, the ACPI DSDT is made from the devices' own
AML (:meth:`DeviceManager.aml`), the FADT from what they provide
(:meth:`DeviceManager.fadt`), and the kernel command line gains their words
(:meth:`DeviceManager.cmdline`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pyvmm.arch.x86_64 import layout
from pyvmm.devices import acpi_pm, cmos, i8042, pvpanic, serial
from pyvmm.devices.bus import Bus
from pyvmm.devices.device import Allocation, DeviceModel, State
from pyvmm.devices.virtio import blk, console, fs, net, net_host, rng
from pyvmm.devices.virtio.backend import VirtioBackend
from pyvmm.devices.virtio.mmio import VirtioMmio
from pyvmm.devices.virtio.trace import Tracer
from pyvmm.errors import UserError
from pyvmm.memory import GuestMemory, Range
from pyvmm.vmm.config import MachineConfig

#: Drives a GSI of the in-kernel interrupt controllers (KVM_IRQ_LINE).
SetIrqLine = Callable[[int, bool], None]


@dataclass(frozen=True)
class Placed:
    """A device and where the manager put it."""

    key: str
    device: DeviceModel
    allocation: Allocation


class DeviceManager:
    """Devices on the port-I/O and MMIO buses, allocated from the layout."""

    def __init__(self, pio: Bus, mmio: Bus, set_irq_line: SetIrqLine) -> None:
        self.pio = pio
        self.mmio = mmio
        self._set_irq_line = set_irq_line
        self._placed: list[Placed] = []
        self._next_mmio = layout.MMIO_WINDOW_START
        self._next_gsi = layout.GSI_ALLOC_FIRST
        #: (address, size, is port I/O) of registers whose writes may be batched.
        self.coalesced: list[tuple[int, int, bool]] = []

    def add(self, device: DeviceModel) -> Placed:
        """Place ``device`` as it asks; raises UserError when the machine has
        no room left (window or interrupt lines used up)."""
        want = device.resources()
        mmio = irq = None
        if want.ports is not None:
            self.pio.insert(want.ports[0], want.ports[1], device)
        if want.mmio_size:
            size = -(-want.mmio_size // layout.MMIO_DEVICE_SIZE) * layout.MMIO_DEVICE_SIZE
            if self._next_mmio + size > layout.MMIO_WINDOW_END:
                raise UserError("too many devices: the MMIO device window is full")
            mmio = Range(self._next_mmio, size)
            self.mmio.insert(mmio.start, want.mmio_size, device)
            self._next_mmio += size
        if want.isa_irq is not None:
            irq = want.isa_irq
        elif want.wants_irq:
            if self._next_gsi > layout.GSI_ALLOC_LAST:
                raise UserError("too many devices: no interrupt line is left for another")
            irq, self._next_gsi = self._next_gsi, self._next_gsi + 1
        allocation = Allocation(want.ports, mmio, irq)
        for offset, size in device.coalesced():
            if want.ports is not None:
                self.coalesced.append((want.ports[0] + offset, size, True))
            elif mmio is not None:
                self.coalesced.append((mmio.start + offset, size, False))
        line = None
        if irq is not None:
            gsi, set_line = irq, self._set_irq_line

            def line(level: bool) -> None:
                set_line(gsi, level)

        device.attach(allocation, line)
        same = sum(1 for p in self._placed if p.device.name == device.name)
        placed = Placed(f"{device.name}#{same}" if same else device.name, device, allocation)
        self._placed.append(placed)
        return placed

    def __iter__(self) -> Iterator[Placed]:
        return iter(self._placed)

    def find(self, kind: type[DeviceModel]) -> DeviceModel | None:
        return next((p.device for p in self._placed if isinstance(p.device, kind)), None)

    def aml(self) -> bytes:
        """The devices' objects for the DSDT, in the order they were added."""
        return b"".join(p.device.aml() for p in self._placed)

    def fadt(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self._placed:
            out.update(p.device.fadt())
        return out

    def cmdline(self, cmdline: str) -> str:
        """``cmdline`` with the devices' words appended."""
        words = [w for p in self._placed if (w := p.device.cmdline())]
        return " ".join([cmdline, *words]).strip()

    def stats(self) -> str:
        """``--stats`` lines of the devices that have something to say."""
        return "".join(f"  {p.key}: {line}\n" for p in self._placed if (line := p.device.stats()))

    def state(self) -> dict[str, State]:
        """Every device's state by its key ("COM1", "virtio-blk#1")."""
        return {p.key: p.device.state() for p in self._placed}

    def restore(self, states: dict[str, State]) -> None:
        """Give each device its saved state; the saved machine must have had
        exactly these devices."""
        keys = [p.key for p in self._placed]
        if sorted(states) != sorted(keys):
            raise ValueError(
                f"the snapshot's devices {sorted(states)} are not this machine's {sorted(keys)}"
            )
        for p in self._placed:
            p.device.restore(states[p.key])

    def close(self) -> None:
        for p in self._placed:
            p.device.close()


@dataclass(frozen=True)
class PcEvents:
    """What the PC devices report, each ending the VM."""

    reset: Callable[[], None]
    poweroff: Callable[[], None]
    panic: Callable[[], None]


def add_pc_devices(
    manager: DeviceManager,
    console_out: Callable[[bytes], None],
    tx_room: Callable[[], int],
    events: PcEvents,
) -> serial.Serial16550:
    """The PC devices pyvmm models: COM1 (the console), the i8042 (whose reset
    line ends the VM), the CMOS clock, pvpanic and the ACPI PM1 block.
    Returns COM1."""
    com1 = serial.Serial16550(console_out, tx_room)
    for device in (
        com1,
        i8042.I8042(on_reset=events.reset),
        cmos.CmosRtc(),
        pvpanic.PvPanic(on_panic=events.panic),
        acpi_pm.AcpiPm(on_poweroff=events.poweroff),
    ):
        manager.add(device)
    return com1


def _card(config: net.NetConfig) -> net.Net:
    try:
        mac = net.parse_mac(config.mac)  # before the link: a passt is a process to stop
    except ValueError as e:
        raise UserError(f"network card: {e}") from None
    link: net.Link = net_host.Tap(config.name) if config.kind == "tap" else net_host.Passt()
    return net.Net(link, mac)


def add_virtio_devices(
    manager: DeviceManager,
    memory: GuestMemory,
    config: MachineConfig,
    trace: Callable[[str], None] | None = None,
) -> None:
    """A virtio-mmio device per disk (the guest's vda, vdb, ... in this
    order), per network card (eth0, ...), then the entropy device, the
    shares and a command's ports; ``trace`` gets a line per request
    (``--trace virtio``). A disk or link that cannot
    be opened is a UserError; the devices placed before it close with the
    machine, one made but not placed is closed here."""
    added: list[VirtioMmio] = []
    backends: list[Callable[[], VirtioBackend]] = [
        functools.partial(blk.Block, d) for d in config.disks
    ]
    backends += [functools.partial(_card, n) for n in config.nets]
    if config.rng:
        backends.append(rng.Rng)
    backends += [functools.partial(fs.Fs, s) for s in config.shares]
    if config.command is not None:
        backends.append(functools.partial(console.CommandPorts, config.command))
    try:
        for make in backends:
            added.append(VirtioMmio(make(), memory))
            placed = manager.add(added[-1])
            if trace is not None:
                added[-1].trace = Tracer(placed.key, trace)
    except BaseException:
        for device in added:
            if device not in (p.device for p in manager):
                device.close()
        raise
