"""virtio-rng, the entropy device (virtio 1.2, section 5.4): one queue of
device-writable buffers, each filled from the host's getrandom(). The
guest's hw_random driver (/dev/hwrng) reads it, and the kernel mixes it
into its own pool, so the guest's random numbers are ready early."""

from __future__ import annotations

import os

from pyvmm.devices.virtio.backend import ID_RNG, VirtioBackend
from pyvmm.devices.virtio.queue import SplitQueue

#: Most bytes given for one buffer (Linux asks for at most a page at a time).
MAX_REQUEST = 64 * 1024


class Rng(VirtioBackend):
    name = "virtio-rng"
    device_id = ID_RNG
    queue_sizes = (64,)

    def __init__(self) -> None:
        self.bytes_given = 0

    def process(self, queue: SplitQueue) -> None:
        while (chain := queue.pop()) is not None:
            size = min(chain.writable_len, MAX_REQUEST)
            written = chain.write(os.getrandom(size)) if size else 0
            self.bytes_given += written
            queue.push(chain.head, written)
            self.kick.interrupt(queue)
            if self.kick.note is not None:
                self.kick.note(f"{written} random bytes")

    def stats(self) -> str:
        return f"{self.bytes_given} random bytes given"
