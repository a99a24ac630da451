"""Which guest pages changed: KVM's dirty log, and pyvmm's own writes.

With KVM_MEM_LOG_DIRTY_PAGES set on a memory slot (set again on the slot
with only its flags changed), KVM write-protects the slot's pages and notes
each one the guest writes; KVM_GET_DIRTY_LOG hands over a bitmap (one bit
per page, in 64-bit words) and starts noting afresh (KVM API, 4.35 and
4.8). KVM cannot see what pyvmm itself writes to guest RAM (the PVM
emulation's stores, device DMA): :meth:`pyvmm.memory.GuestMemory.mark_written`
notes those, and :class:`DirtyLog` hands over both.
"""

from __future__ import annotations

from typing import Any

from pyvmm.kvm import Vm, ffi, lib
from pyvmm.memory import PAGE_SIZE, GuestMemory


class DirtyLog:
    """Dirty pages of ``memory``'s slots in ``vm``, from :meth:`start` on."""

    def __init__(self, vm: Vm, memory: GuestMemory) -> None:
        self.vm = vm
        self.memory = memory
        self._bitmaps: dict[int, Any] = {}
        self.on = False

    def start(self) -> None:
        for slot, _, size, _ in self.memory.slots():
            words = -(-size // PAGE_SIZE // 64)
            self._bitmaps[slot] = ffi.new("uint64_t[]", max(words, 1))
        self.memory.track_writes(True)
        self.memory.register(self.vm, lib.KVM_MEM_LOG_DIRTY_PAGES)
        self.on = True

    def take(self) -> list[int]:
        """Guest addresses of the pages written since the last call (or
        :meth:`start`), lowest first."""
        pages = {n * PAGE_SIZE for n in self.memory.take_written()}
        for slot, gpa, _, _ in self.memory.slots():
            bitmap = self._bitmaps[slot]
            self.vm.get_dirty_log(slot, bitmap)
            data = ffi.buffer(bitmap)
            for word_index, word in enumerate(memoryview(data).cast("Q")):
                if not word:
                    continue
                base = gpa + word_index * 64 * PAGE_SIZE
                while word:
                    low = word & -word
                    pages.add(base + (low.bit_length() - 1) * PAGE_SIZE)
                    word ^= low
        return sorted(pages)

    def stop(self) -> None:
        """Slots back to normal: no write protection, nothing noted."""
        if not self.on:
            return
        self.on = False
        self.memory.track_writes(False)
        self.memory.register(self.vm, 0)
