"""A minimal virtio driver for tests: it sets up a virtio-mmio device the
way Linux's virtio_mmio driver does (virtio 1.2, 3.1.1 and 4.2.3), lays out
split queues in guest RAM and makes chains available, so the device models
can be tested without KVM."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pyvmm.devices.virtio import mmio, queue
from pyvmm.devices.virtio.mmio import Reg, VirtioMmio
from pyvmm.memory import GuestMemory, Range

RAM = 4 << 20
#: Where the driver puts each queue's areas, and buffers.
QUEUES_AT = 0x10000
BUFFERS_AT = 0x100000


def ram() -> GuestMemory:
    return GuestMemory([Range(0, RAM)])


@dataclass
class Driver:
    device: VirtioMmio
    memory: GuestMemory
    size: int = 16
    interrupts: list[bool] = field(default_factory=list)
    avail_idx: dict[int, int] = field(default_factory=dict)
    next_buffer: int = BUFFERS_AT

    def __post_init__(self) -> None:
        self.device.irq_line = self.interrupts.append

    def reg(self, offset: int) -> int:
        value: int = struct.unpack("<I", self.device.read(offset, 4))[0]
        return value

    def set(self, offset: int, value: int) -> None:
        self.device.write(offset, struct.pack("<I", value & 0xFFFFFFFF))

    def negotiate(self, features: int | None = None) -> bool:
        """Reset, acknowledge, take ``features`` (default: all offered);
        whether the device accepted them (FEATURES_OK reads back)."""
        self.set(Reg.STATUS, 0)
        self.set(Reg.STATUS, mmio.ACKNOWLEDGE)
        self.set(Reg.STATUS, mmio.ACKNOWLEDGE | mmio.DRIVER)
        offered = 0
        for sel in (0, 1):
            self.set(Reg.DEVICE_FEATURES_SEL, sel)
            offered |= self.reg(Reg.DEVICE_FEATURES) << (32 * sel)
        wanted = offered if features is None else features
        for sel in (0, 1):
            self.set(Reg.DRIVER_FEATURES_SEL, sel)
            self.set(Reg.DRIVER_FEATURES, wanted >> (32 * sel))
        self.set(Reg.STATUS, mmio.ACKNOWLEDGE | mmio.DRIVER | mmio.FEATURES_OK)
        return bool(self.reg(Reg.STATUS) & mmio.FEATURES_OK)

    def areas(self, index: int) -> tuple[int, int, int]:
        base = QUEUES_AT + index * 0x4000
        return base, base + 0x1000, base + 0x2000

    def setup_queue(self, index: int, size: int | None = None) -> None:
        size = self.size if size is None else size
        desc, avail, used = self.areas(index)
        self.set(Reg.QUEUE_SEL, index)
        self.set(Reg.QUEUE_NUM, size)
        for low, addr in ((Reg.QUEUE_DESC_LOW, desc), (Reg.QUEUE_DRIVER_LOW, avail),
                          (Reg.QUEUE_DEVICE_LOW, used)):  # fmt: skip
            self.set(low, addr)
            self.set(low + 4, addr >> 32)
        self.set(Reg.QUEUE_READY, 1)
        self.avail_idx[index] = 0

    def start(self, features: int | None = None) -> None:
        assert self.negotiate(features)
        for q in range(len(self.device.queues)):
            self.setup_queue(q)
        self.set(Reg.STATUS, self.reg(Reg.STATUS) | mmio.DRIVER_OK)

    def buffer(self, data: bytes | int) -> tuple[int, int]:
        """Guest RAM for a buffer: ``data`` copied in, or that many zero bytes."""
        content = bytes(data) if isinstance(data, int) else data
        gpa = self.next_buffer
        self.memory.write(gpa, content)
        self.next_buffer += (len(content) + 0xFFF) & ~0xFFF or 0x1000
        return gpa, len(content)

    def descriptors(self, index: int, descs: list[tuple[int, int, int, int]]) -> None:
        """Write raw descriptors (addr, len, flags, next) from slot 0."""
        table = self.areas(index)[0]
        for i, d in enumerate(descs):
            self.memory.write(table + 16 * i, struct.pack("<QIHH", *d))

    def offer(self, index: int, head: int, notify: bool = True) -> None:
        """Put ``head`` in the available ring and notify the queue."""
        _, avail, _ = self.areas(index)
        idx = self.avail_idx[index]
        self.memory.write(avail + 4 + 2 * (idx % self.size), struct.pack("<H", head))
        self.avail_idx[index] = idx = (idx + 1) & 0xFFFF
        self.memory.write(avail + 2, struct.pack("<H", idx))
        if notify:
            self.set(Reg.QUEUE_NOTIFY, index)

    def chain(self, index: int, readable: list[bytes], writable: list[int]) -> int:
        """A chain of fresh buffers from slot 0, offered; returns the head."""
        bufs = [(*self.buffer(r), 0) for r in readable]
        bufs += [(*self.buffer(w), queue.DESC_F_WRITE) for w in writable]
        descs = [
            (gpa, n, flags | (queue.DESC_F_NEXT if i + 1 < len(bufs) else 0), i + 1)
            for i, (gpa, n, flags) in enumerate(bufs)
        ]
        self.descriptors(index, descs)
        self.offer(index, 0)
        return 0

    def used(self, index: int) -> list[tuple[int, int]]:
        """(head, length) of every used element so far."""
        _, _, used = self.areas(index)
        count = struct.unpack("<H", self.memory.read(used + 2, 2))[0]
        return [
            struct.unpack("<II", self.memory.read(used + 4 + 8 * (i % self.size), 8))
            for i in range(count)
        ]
