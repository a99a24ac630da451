"""Split virtqueues (virtio 1.2, section 2.7), as a device reads and fills them.

Three areas of guest RAM, laid out by the driver:

    descriptor table   size x 16 bytes: le64 addr, le32 len, le16 flags, le16 next
    available ring     le16 flags, le16 idx, le16 ring[size], le16 used_event
    used ring          le16 flags, le16 idx, {le32 id, le32 len} ring[size], le16 avail_event

The driver puts the head of a descriptor chain in the available ring; the
device walks the chain (:meth:`SplitQueue.pop`), does the work, and puts
the head with the number of bytes it wrote in the used ring
(:meth:`SplitQueue.push`).

Everything here comes from an untrusted guest: every address must lie in
guest RAM, a chain may not be longer than the queue (so a loop ends), an
indirect table may not hold another, and the available index may not run
ahead by more than the queue's size. Breaking a rule raises
:class:`QueueError`; the transport then marks the device as needing a reset
(DEVICE_NEEDS_RESET) and stops serving the queue.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pyvmm.memory import GuestMemory, GuestMemoryError

# Descriptor flags (2.7.5).
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
# Ring flags (2.7.6, 2.7.8).
AVAIL_F_NO_INTERRUPT = 1
#: Largest split queue (2.7: "Queue Size ... maximum 32768").
MAX_QUEUE_SIZE = 32768
DESC_SIZE = 16
_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")


class QueueError(Exception):
    """The driver broke a virtqueue rule; the device needs a reset."""


@dataclass(frozen=True)
class Buffer:
    """One descriptor's buffer: guest address, length, device-writable or not."""

    gpa: int
    length: int
    writable: bool


class Chain:
    """A descriptor chain taken from the available ring: its head index
    and buffers, readable ones first (2.7.4.2)."""

    def __init__(self, head: int, buffers: list[Buffer], memory: GuestMemory) -> None:
        self.head = head
        self.buffers = buffers
        self.memory = memory
        self.readable = [b for b in buffers if not b.writable]
        self.writable = [b for b in buffers if b.writable]
        self.readable_len = sum(b.length for b in self.readable)
        self.writable_len = sum(b.length for b in self.writable)

    def read(self, offset: int = 0, limit: int | None = None) -> bytes:
        """The readable bytes from ``offset``, at most ``limit`` of them."""
        want = self.readable_len - offset if limit is None else limit
        return b"".join(self.readable_views(offset, want))

    def readable_views(self, offset: int, size: int) -> list[memoryview]:
        """Views of ``size`` readable bytes from ``offset`` (for writev)."""
        return [self.memory.view(gpa, n) for gpa, n in _spans(self.readable, offset, size)]

    def writable_views(self, offset: int, size: int) -> list[memoryview]:
        """Views of ``size`` writable bytes from ``offset`` (for readv); the
        pages are noted as written (for migration's dirty tracking)."""
        spans = _spans(self.writable, offset, size)
        for gpa, n in spans:
            self.memory.mark_written(gpa, n)
        return [self.memory.view(gpa, n) for gpa, n in spans]

    def write(self, data: bytes | memoryview, offset: int = 0) -> int:
        """Scatter ``data`` into the writable buffers from ``offset``; how
        many bytes fitted."""
        data = memoryview(data)
        done = 0
        for view in self.writable_views(offset, min(len(data), self.writable_len - offset)):
            view[:] = data[done : done + len(view)]
            done += len(view)
        return done


def _spans(buffers: list[Buffer], offset: int, size: int) -> list[tuple[int, int]]:
    """(guest address, length) of the ``size`` bytes from ``offset`` in
    ``buffers`` taken as one run of bytes."""
    out = []
    for b in buffers:
        if size <= 0:
            break
        if offset >= b.length:
            offset -= b.length
            continue
        n = min(b.length - offset, size)
        out.append((b.gpa + offset, n))
        size -= n
        offset = 0
    return out


class SplitQueue:
    """One virtqueue: what the driver configured, and the device's place in it."""

    def __init__(self, index: int, max_size: int) -> None:
        self.index = index
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.ready = False
        self.desc_addr = self.avail_addr = self.used_addr = 0
        #: The next available-ring entry to take; the next used-ring entry to fill.
        self.next_avail = self.next_used = 0
        #: next_used when the driver was last interrupted (EVENT_IDX).
        self.signalled_used: int | None = None
        self.event_idx = False
        self.broken = False
        self._memory: GuestMemory | None = None

    # -- set up by the driver --------------------------------------------------

    def activate(self, memory: GuestMemory, event_idx: bool) -> None:
        """The driver set QueueReady: check its layout (raises QueueError)."""
        size = self.size
        if not 1 <= size <= self.max_size or size & (size - 1):
            raise QueueError(
                f"queue {self.index}: size {size} is not a power of 2 up to {self.max_size}"
            )
        areas = (
            (self.desc_addr, DESC_SIZE * size, 16, "descriptor table"),
            (self.avail_addr, 6 + 2 * size, 2, "available ring"),
            (self.used_addr, 6 + 8 * size, 4, "used ring"),
        )  # sizes and alignments: 2.7, table "Virtqueue Part Alignment and Size"
        for addr, length, align, what in areas:
            if addr % align or not memory.contains(addr, length):
                raise QueueError(f"queue {self.index}: its {what} at {addr:#x} is not in RAM")
        self._memory = memory
        self.event_idx = event_idx
        self.ready = True

    # -- the device's side -------------------------------------------------------

    def _u16(self, gpa: int) -> int:
        assert self._memory is not None
        value: int = _U16.unpack(self._memory.view(gpa, 2))[0]
        return value

    def pending(self) -> int:
        """Chains the driver made available that the device has not taken."""
        if not self.ready or self.broken:
            return 0
        count = (self._u16(self.avail_addr + 2) - self.next_avail) & 0xFFFF
        if count > self.size:
            self.broken = True
            raise QueueError(f"queue {self.index}: the available index ran {count} ahead")
        return count

    def pop(self) -> Chain | None:
        """The next available chain, or None. Raises QueueError for a bad one."""
        if not self.pending():
            return None
        assert self._memory is not None
        slot = self.next_avail % self.size
        head = self._u16(self.avail_addr + 4 + 2 * slot)
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        try:
            chain = Chain(head, self._walk(head), self._memory)
        except (QueueError, GuestMemoryError) as e:
            self.broken = True
            raise QueueError(f"queue {self.index}: {e}") from None
        if self.event_idx:  # ask to be notified when the driver adds the next one (2.7.10)
            self._put_u16(self.used_addr + 4 + 8 * self.size, self.next_avail)
        return chain

    def _walk(self, head: int) -> list[Buffer]:
        assert self._memory is not None
        memory = self._memory
        buffers: list[Buffer] = []
        table, count, index = self.desc_addr, self.size, head
        indirect = False
        seen = 0
        while True:
            if index >= count:
                raise QueueError(f"descriptor {index} is beyond its table of {count}")
            seen += 1
            if seen > count:  # no table holds a longer chain: this ends loops (2.7.5.3.1)
                raise QueueError("a descriptor chain is longer than its table (a loop?)")
            addr, length, flags, nxt = _DESC.unpack(
                memory.view(table + DESC_SIZE * index, DESC_SIZE)
            )
            if flags & DESC_F_INDIRECT:
                if indirect:
                    raise QueueError("an indirect table inside an indirect table")
                if flags & DESC_F_NEXT or buffers:
                    raise QueueError("an indirect descriptor that is not alone in its chain")
                if length == 0 or length % DESC_SIZE or length // DESC_SIZE > self.size:
                    raise QueueError(f"an indirect table of {length} bytes")
                if not memory.contains(addr, length):
                    raise QueueError(f"an indirect table at {addr:#x} outside RAM")
                table, count, index, indirect = addr, length // DESC_SIZE, 0, True
                seen = 0  # the chain goes on in the indirect table (2.7.5.3.2)
                continue
            if not memory.contains(addr, max(length, 1)):
                raise QueueError(f"a buffer at {addr:#x}+{length:#x} outside RAM")
            writable = bool(flags & DESC_F_WRITE)
            if not writable and buffers and buffers[-1].writable:
                raise QueueError("a device-readable buffer after a writable one")
            buffers.append(Buffer(addr, length, writable))
            if not flags & DESC_F_NEXT:
                return buffers
            index = nxt

    def _put_u16(self, gpa: int, value: int) -> None:
        assert self._memory is not None
        _U16.pack_into(self._memory.view(gpa, 2), 0, value)
        self._memory.mark_written(gpa, 2)

    def push(self, head: int, written: int) -> None:
        """Return chain ``head`` to the driver, ``written`` bytes filled."""
        assert self._memory is not None
        slot = self.next_used % self.size
        elem = self.used_addr + 4 + 8 * slot
        _USED_ELEM.pack_into(self._memory.view(elem, 8), 0, head, written)
        self._memory.mark_written(elem, 8)
        self.next_used = (self.next_used + 1) & 0xFFFF
        # The element before the index: x86 keeps stores in order.
        self._put_u16(self.used_addr + 2, self.next_used)

    def should_interrupt(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since
        the last one: its used_event with EVENT_IDX (2.7.10), else the
        available ring's NO_INTERRUPT flag."""
        if not self.ready:
            return False
        if self.event_idx:
            event = self._u16(self.avail_addr + 4 + 2 * self.size)
            old = self.signalled_used
            new = self.signalled_used = self.next_used
            if old is None:
                return True
            # vring_need_event: new passed event since old (2.7.10.1)
            return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF
        return not self._u16(self.avail_addr) & AVAIL_F_NO_INTERRUPT

    # -- saved state ---------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "size": self.size, "ready": self.ready, "desc": self.desc_addr,
            "avail": self.avail_addr, "used": self.used_addr, "next_avail": self.next_avail,
            "next_used": self.next_used, "event_idx": self.event_idx, "broken": self.broken,
        }  # fmt: skip

    def restore(self, state: dict[str, Any], memory: GuestMemory) -> None:
        self.reset()
        try:
            self.size = int(state["size"])
            self.desc_addr, self.avail_addr = int(state["desc"]), int(state["avail"])
            self.used_addr = int(state["used"])
            self.next_avail = int(state["next_avail"]) & 0xFFFF
            self.next_used = int(state["next_used"]) & 0xFFFF
            ready, event_idx = bool(state["ready"]), bool(state["event_idx"])
            self.broken = bool(state["broken"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"queue {self.index}: saved state is malformed") from None
        if ready:
            try:
                self.activate(memory, event_idx)
            except QueueError as e:
                raise ValueError(str(e)) from None
