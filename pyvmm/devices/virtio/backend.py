"""What a virtio device type provides to the transport (:mod:`.mmio`).

A backend says what it is (device ID, feature bits, queue sizes, its
configuration space) and serves its queues: the transport calls
:meth:`VirtioBackend.process` when the driver notifies a queue, and the
backend takes chains (:meth:`SplitQueue.pop`), does the work, returns them
(:meth:`SplitQueue.push`) and asks for an interrupt through the
:class:`Kick` it was given. A backend with work of its own (frames arriving
from the network) calls ``kick.work`` from its I/O thread handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyvmm.devices.virtio.queue import SplitQueue

# Device IDs (virtio 1.2, section 5).
ID_NET = 1
ID_BLOCK = 2
ID_RNG = 4
ID_FS = 26

# Feature bits every device may offer (6, "Reserved Feature Bits").
F_INDIRECT_DESC = 1 << 28
F_EVENT_IDX = 1 << 29
F_VERSION_1 = 1 << 32


class Kick:
    """How a backend reaches its transport: ``interrupt(queue)`` after
    pushing used chains; ``failed(why)`` when the driver broke the rules;
    ``queues``, all of the device's queues (a device that answers on one
    queue what came on another); ``note(text)``, when set (``--trace
    virtio``), for each request served."""

    def __init__(
        self,
        interrupt: Callable[[SplitQueue], None],
        failed: Callable[[str], None],
        queues: list[SplitQueue] | None = None,
    ) -> None:
        self.interrupt = interrupt
        self.failed = failed
        self.queues = queues or []
        self.note: Callable[[str], None] | None = None


class VirtioBackend:
    """Base of the device types: subclasses set the class attributes and
    implement :meth:`process`; the rest is optional."""

    #: For traces and state files.
    name = "virtio"
    device_id = 0
    #: Each queue's largest size (what QueueNumMax reads).
    queue_sizes: tuple[int, ...] = (256,)
    #: Serve queue notifications on the vCPU that wrote them (an MMIO exit)
    #: rather than by ioeventfd on the I/O thread: for a driver that spins
    #: until the device has taken its buffer, so the spin ends at once
    #: instead of taking a CPU from the thread it waits for.
    notify_on_vcpu = False
    #: Set by the transport when it takes the backend.
    kick: Kick

    def features(self) -> int:
        """Device-specific feature bits offered (the transport adds its own)."""
        return 0

    def config(self) -> bytes:
        """The device configuration space as it reads now."""
        return b""

    def write_config(self, offset: int, data: bytes) -> None:
        """A driver's write into the configuration space (ignored by default)."""

    def activate(self, features: int) -> None:
        """The driver set DRIVER_OK with ``features`` accepted."""

    def process(self, queue: SplitQueue) -> None:
        """The driver notified ``queue``: serve what it made available."""
        raise NotImplementedError

    def reset(self) -> None:
        """The driver reset the device: forget everything it negotiated."""

    def stats(self) -> str:
        """What it did, for ``--stats``."""
        return ""

    def cmdline(self) -> str:
        """Words for the kernel command line (none by default)."""
        return ""

    def host_fd(self) -> int | None:
        """A descriptor that turns readable when the host has work for the
        device (frames from the network); the I/O thread watches it."""
        return None

    def host_ready(self, queues: list[SplitQueue]) -> bool:
        """``host_fd`` is readable: do that work. False: stop watching the
        descriptor until the driver next notifies a queue."""
        return False

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state` gave (ValueError if it makes no sense)."""

    def close(self) -> None:
        """Release host resources (files, sockets, child processes)."""
