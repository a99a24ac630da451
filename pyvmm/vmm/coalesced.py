"""Writes KVM batches instead of exiting: coalesced port I/O and MMIO.

For a register whose writes need no answer, a device can let KVM keep
them: KVM_REGISTER_COALESCED_MMIO (with ``pio`` set, for ports) makes a
guest write there land in a ring in the page at
KVM_COALESCED_MMIO_PAGE_OFFSET of the vCPU mapping, with no exit at all
(KVM API, 4.116 and 4.117). The UART's transmit register is such a
register: Linux writes up to 16 bytes after each "transmitter empty"
interrupt without reading anything in between.

The ring must be applied in order before anything else the guest does is
handled, so :class:`CoalescedRing` is drained before every exit's handler
runs, and, because a guest that goes idle makes no exit at all, from a
timer every ``INTERVAL`` seconds.
"""

from __future__ import annotations

import threading
from typing import Any

from pyvmm.devices.bus import Bus
from pyvmm.kvm import Vcpu, ffi, lib

#: How often the ring is looked at when no exit drains it.
INTERVAL = 0.01
#: Entries taken from the ring per call into C.
BATCH = 64
_PAGE = 4096


class CoalescedRing:
    """The ring of one VM (every vCPU mapping shows the same page)."""

    def __init__(self, vcpu: Vcpu, pio: Bus, mmio: Bus) -> None:
        self._pio, self._mmio = pio, mmio
        offset = lib.KVM_COALESCED_MMIO_PAGE_OFFSET * _PAGE
        self._buffer = ffi.from_buffer(vcpu.run_page)
        self._ring: Any = self._buffer + offset
        # first and last, the two u32 at the start of struct kvm_coalesced_mmio_ring.
        self._heads = vcpu.run_page[offset : offset + 8].cast("I")
        self._out = ffi.new("struct pyvmm_coalesced[]", BATCH)
        self._lock = threading.Lock()
        #: Writes applied so far.
        self.applied = 0

    def pending(self) -> bool:
        return bool(self._heads[0] != self._heads[1])

    def drain(self) -> None:
        """Apply every batched write, oldest first, on its bus."""
        with self._lock:
            while True:
                n = lib.pyvmm_coalesced_drain(self._ring, self._out, BATCH)
                for i in range(n):
                    entry = self._out[i]
                    bus = self._pio if entry.pio else self._mmio
                    bus.write(entry.addr, bytes(entry.data[0 : entry.len]))
                self.applied += n
                if n < BATCH:
                    return

    def close(self) -> None:
        self._heads.release()
        ffi.release(self._buffer)
