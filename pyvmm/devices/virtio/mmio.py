"""The virtio-mmio transport, version 2 (virtio 1.2, section 4.2).

A page of the MMIO device window holds the registers below; the guest's
virtio_mmio driver finds it through an ACPI device with ID ``LNRO0005``
(Linux's drivers/virtio/virtio_mmio.c matches it) whose resources are the
page and an interrupt. The driver reads what the device is, agrees on
features, lays out each queue in its RAM, and then notifies a queue by
writing its index to QueueNotify. pyvmm asks KVM to turn those writes into
an eventfd signal (ioeventfd), served on an I/O thread, so the vCPU does
not leave the guest for them; the interrupt goes back through an irqfd.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import IntEnum
from typing import Any

from pyvmm.arch.x86_64 import aml
from pyvmm.devices.device import DeviceModel, Resources, State
from pyvmm.devices.virtio.backend import (
    F_EVENT_IDX,
    F_INDIRECT_DESC,
    F_VERSION_1,
    Kick,
    VirtioBackend,
)
from pyvmm.devices.virtio.queue import QueueError, SplitQueue
from pyvmm.memory import GuestMemory

MAGIC = 0x74726976  # "virt"
VERSION = 2
VENDOR = 0x4D565950  # "PYVM"


class Reg(IntEnum):
    """Register offsets (4.2.2, table "MMIO Device Register Layout")."""

    MAGIC_VALUE = 0x000
    VERSION = 0x004
    DEVICE_ID = 0x008
    VENDOR_ID = 0x00C
    DEVICE_FEATURES = 0x010
    DEVICE_FEATURES_SEL = 0x014
    DRIVER_FEATURES = 0x020
    DRIVER_FEATURES_SEL = 0x024
    QUEUE_SEL = 0x030
    QUEUE_NUM_MAX = 0x034
    QUEUE_NUM = 0x038
    QUEUE_READY = 0x044
    QUEUE_NOTIFY = 0x050
    INTERRUPT_STATUS = 0x060
    INTERRUPT_ACK = 0x064
    STATUS = 0x070
    QUEUE_DESC_LOW = 0x080
    QUEUE_DESC_HIGH = 0x084
    QUEUE_DRIVER_LOW = 0x090
    QUEUE_DRIVER_HIGH = 0x094
    QUEUE_DEVICE_LOW = 0x0A0
    QUEUE_DEVICE_HIGH = 0x0A4
    SHM_SEL = 0x0AC
    SHM_LEN_LOW = 0x0B0
    SHM_LEN_HIGH = 0x0B4
    SHM_BASE_LOW = 0x0B8
    SHM_BASE_HIGH = 0x0BC
    CONFIG_GENERATION = 0x0FC


CONFIG = 0x100
REGISTERS_SIZE = 0x200
# Device status bits (2.1).
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK = 1, 2, 4, 8
DEVICE_NEEDS_RESET, FAILED = 64, 128
# InterruptStatus bits (4.2.2).
INT_USED_BUFFER, INT_CONFIG = 1, 2
#: Feature bits the transport itself supports, offered with the device's.
TRANSPORT_FEATURES = F_VERSION_1 | F_EVENT_IDX | F_INDIRECT_DESC
#: The ACPI hardware ID Linux's virtio_mmio driver matches.
ACPI_HID = "LNRO0005"

_U32 = struct.Struct("<I")


class VirtioMmio(DeviceModel):
    """One virtio device on the MMIO bus: ``backend`` is what it is."""

    def __init__(self, backend: VirtioBackend, memory: GuestMemory) -> None:
        super().__init__()
        self.backend = backend
        self.name = backend.name
        self.memory = memory
        self.queues = [SplitQueue(i, size) for i, size in enumerate(backend.queue_sizes)]
        backend.kick = Kick(self._used, self._fail, self.queues)
        #: Set once KVM signals QueueNotify by eventfd (the I/O thread serves it).
        self.uses_ioeventfd = False
        #: Set to raise the interrupt through KVM_IRQFD instead of KVM_IRQ_LINE.
        self.edge: Callable[[], None] | None = None
        #: Called after each notification: the I/O thread watches the
        #: backend's host descriptor again (the driver posted buffers).
        self.notified: Callable[[], None] | None = None
        #: Why the device last set DEVICE_NEEDS_RESET (for traces and tests).
        self.last_error = ""
        #: For --stats: QueueNotify writes served, interrupts raised.
        self.notifications = self.interrupts = 0
        self._reset_registers()

    def _reset_registers(self) -> None:
        self.status = 0
        self.device_features_sel = self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.interrupt_status = 0
        self.config_generation = 0
        for q in self.queues:
            q.reset()

    # -- what the machine needs to know --------------------------------------------

    def resources(self) -> Resources:
        return Resources(mmio_size=REGISTERS_SIZE, wants_irq=True)

    def aml(self) -> bytes:
        mmio, irq = self.allocation.mmio, self.allocation.irq
        assert mmio is not None and irq is not None
        index = (mmio.start >> 12) & 0xFFF  # the page's place in the window: unique
        return aml.hardware_device(
            f"V{index:03X}",
            ACPI_HID,
            aml.resource_template(
                aml.memory32_fixed(mmio.start, mmio.size),
                aml.extended_irq(irq, aml.IRQ_CONSUMER | aml.IRQ_EDGE),
            ),
            uid=index,
        )

    def cmdline(self) -> str:
        return self.backend.cmdline()

    def notify_points(self) -> list[tuple[int, int, int]]:
        """(offset, size, value) of the writes KVM may signal as eventfds:
        QueueNotify with each queue's index."""
        return [(Reg.QUEUE_NOTIFY, 4, q.index) for q in self.queues]

    # -- registers -------------------------------------------------------------------

    def offered(self) -> int:
        return self.backend.features() | TRANSPORT_FEATURES

    def read(self, offset: int, size: int) -> bytes:
        if offset >= CONFIG:
            config = self.backend.config()
            start = offset - CONFIG
            return config[start : start + size].ljust(size, b"\0")
        if size != 4 or offset % 4:
            return b"\0" * size  # 4.2.2.2: the registers are read 32 bits at a time
        return _U32.pack(self._register(offset) & 0xFFFFFFFF)

    def _register(self, offset: int) -> int:
        q = self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None
        match offset:
            case Reg.MAGIC_VALUE:
                return MAGIC
            case Reg.VERSION:
                return VERSION
            case Reg.DEVICE_ID:
                return self.backend.device_id
            case Reg.VENDOR_ID:
                return VENDOR
            case Reg.DEVICE_FEATURES:
                return (
                    self.offered() >> (32 * self.device_features_sel)
                    if self.device_features_sel < 2
                    else 0
                )
            case Reg.QUEUE_NUM_MAX:
                return q.max_size if q is not None else 0
            case Reg.QUEUE_READY:
                return int(q.ready) if q is not None else 0
            case Reg.INTERRUPT_STATUS:
                return self.interrupt_status
            case Reg.STATUS:
                return self.status
            case Reg.SHM_LEN_LOW | Reg.SHM_LEN_HIGH | Reg.SHM_BASE_LOW | Reg.SHM_BASE_HIGH:
                return 0xFFFFFFFF  # no shared memory regions: length and base all ones
            case Reg.CONFIG_GENERATION:
                return self.config_generation
        return 0

    def write(self, offset: int, data: bytes) -> None:
        if offset >= CONFIG:
            self.backend.write_config(offset - CONFIG, bytes(data))
            return
        if len(data) != 4 or offset % 4:
            return
        value = _U32.unpack(data)[0]
        q = self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None
        setting_up = q is not None and not q.ready and not self.status & DEVICE_NEEDS_RESET
        match offset:
            case Reg.DEVICE_FEATURES_SEL:
                self.device_features_sel = value
            case Reg.DRIVER_FEATURES:
                if self.driver_features_sel < 2 and not self.status & FEATURES_OK:
                    shift = 32 * self.driver_features_sel
                    mask = 0xFFFFFFFF << shift
                    self.driver_features = (self.driver_features & ~mask) | (value << shift)
            case Reg.DRIVER_FEATURES_SEL:
                self.driver_features_sel = value
            case Reg.QUEUE_SEL:
                self.queue_sel = value
            case Reg.QUEUE_NUM if setting_up:
                assert q is not None
                q.size = value
            case Reg.QUEUE_READY if q is not None:
                self._set_ready(q, bool(value))
            case Reg.QUEUE_NOTIFY:
                if not self.uses_ioeventfd or value >= len(self.queues):
                    self.notify(value)
            case Reg.INTERRUPT_ACK:
                self.interrupt_status &= ~value
            case Reg.STATUS:
                self._set_status(value)
            case (
                Reg.QUEUE_DESC_LOW
                | Reg.QUEUE_DESC_HIGH
                | Reg.QUEUE_DRIVER_LOW
                | Reg.QUEUE_DRIVER_HIGH
                | Reg.QUEUE_DEVICE_LOW
                | Reg.QUEUE_DEVICE_HIGH
            ) if setting_up:
                assert q is not None
                self._set_address(q, offset, value)

    @staticmethod
    def _set_address(q: SplitQueue, offset: int, value: int) -> None:
        name = {0x80: "desc_addr", 0x90: "avail_addr", 0xA0: "used_addr"}[offset & ~0xF]
        old = getattr(q, name)
        if offset & 4:
            setattr(q, name, (old & 0xFFFFFFFF) | value << 32)
        else:
            setattr(q, name, (old & ~0xFFFFFFFF) | value)

    def _set_ready(self, q: SplitQueue, ready: bool) -> None:
        if not ready:
            q.ready = False
            return
        if q.ready or not self.status & FEATURES_OK or self.status & DEVICE_NEEDS_RESET:
            return
        try:
            q.activate(self.memory, bool(self.driver_features & F_EVENT_IDX))
        except QueueError as e:
            self._fail(str(e))

    def _set_status(self, value: int) -> None:
        if value == 0:  # 4.2.3.1: writing 0 resets the device
            self.backend.reset()
            self._reset_registers()
            self.irq_line(False)
            return
        added = value & ~self.status
        if added & FEATURES_OK and not self._features_acceptable():
            value &= ~FEATURES_OK  # 3.1.1: the driver rereads and sees it refused
        self.status = (value & ~DEVICE_NEEDS_RESET) | (self.status & DEVICE_NEEDS_RESET)
        if added & DRIVER_OK and value & FEATURES_OK and not self.status & DEVICE_NEEDS_RESET:
            self.backend.activate(self.driver_features)
            for q in self.queues:  # chains made available before DRIVER_OK
                self._serve(q)

    def _features_acceptable(self) -> bool:
        wanted = self.driver_features
        return not wanted & ~self.offered() and bool(wanted & F_VERSION_1)

    # -- queues and interrupts ---------------------------------------------------------

    def notify(self, index: int) -> None:
        """The driver notified queue ``index`` (by ioeventfd or by an exit)."""
        if index < len(self.queues) and self.status & DRIVER_OK:
            self.notifications += 1
            self._serve(self.queues[index])
            if self.notified is not None:
                self.notified()

    def host_ready(self) -> bool:
        """The backend's host descriptor is readable (see
        :meth:`VirtioBackend.host_ready`); False: stop watching it for now."""
        if not self.status & DRIVER_OK or self.status & DEVICE_NEEDS_RESET:
            return False
        try:
            return self.backend.host_ready(self.queues)
        except QueueError as e:
            self._fail(str(e))
            return False

    def _serve(self, q: SplitQueue) -> None:
        if not q.ready or q.broken or self.status & DEVICE_NEEDS_RESET:
            return
        try:
            self.backend.process(q)
        except QueueError as e:
            self._fail(str(e))

    def _used(self, q: SplitQueue) -> None:
        if q.should_interrupt():
            self.interrupt_status |= INT_USED_BUFFER
            self.interrupts += 1
            self._pulse()

    def _fail(self, why: str) -> None:
        """2.1.2: set DEVICE_NEEDS_RESET and tell the driver with a
        configuration change notification."""
        self.last_error = why
        if self.trace is not None:
            self.trace(f"the driver broke a rule, the device needs a reset: {why}")
        self.status |= DEVICE_NEEDS_RESET
        self.interrupt_status |= INT_CONFIG
        self._pulse()

    def config_changed(self) -> None:
        self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
        self.interrupt_status |= INT_CONFIG
        self._pulse()

    def _pulse(self) -> None:
        if self.edge is not None:
            self.edge()
            return
        self.irq_line(True)  # an edge: the interrupt is edge-triggered (see aml)
        self.irq_line(False)

    @property
    def trace(self) -> Callable[[str], None] | None:
        """For ``--trace virtio``: takes a line per request the backend
        serves, and one when the driver breaks a rule."""
        return self.backend.kick.note

    @trace.setter
    def trace(self, out: Callable[[str], None] | None) -> None:
        self.backend.kick.note = out

    def stats(self) -> str:
        done = self.backend.stats()
        return (
            f"{self.notifications} notifications, {self.interrupts} interrupts"
            + (f", {done}" if done else "")
            + (f"; needs a reset: {self.last_error}" if self.status & DEVICE_NEEDS_RESET else "")
        )

    # -- saved state ------------------------------------------------------------------

    def state(self) -> State:
        return {
            "status": self.status, "driver_features": self.driver_features,
            "device_features_sel": self.device_features_sel,
            "driver_features_sel": self.driver_features_sel, "queue_sel": self.queue_sel,
            "interrupt_status": self.interrupt_status,
            "config_generation": self.config_generation,
            "queues": [q.state() for q in self.queues], "backend": self.backend.state(),
        }  # fmt: skip

    def restore(self, state: State) -> None:
        try:
            queues: list[dict[str, Any]] = state["queues"]
            if not isinstance(queues, list) or len(queues) != len(self.queues):
                raise ValueError
            self.status = int(state["status"]) & 0xFF
            self.driver_features = int(state["driver_features"]) & (1 << 64) - 1
            self.device_features_sel = int(state["device_features_sel"])
            self.driver_features_sel = int(state["driver_features_sel"])
            self.queue_sel = int(state["queue_sel"])
            self.interrupt_status = int(state["interrupt_status"]) & 3
            self.config_generation = int(state["config_generation"]) & 0xFFFFFFFF
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{self.name}: saved transport state is malformed") from None
        for q, saved in zip(self.queues, queues, strict=True):
            q.restore(saved, self.memory)
        self.backend.restore(state.get("backend", {}))
        if self.status & DRIVER_OK and not self.status & DEVICE_NEEDS_RESET:
            self.backend.activate(self.driver_features)
            # A notification in flight when the guest stopped is not part of
            # the state: serve what the driver had made available.
            for q in self.queues:
                self._serve(q)

    def close(self) -> None:
        self.backend.close()
