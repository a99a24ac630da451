"""virtio-net, an Ethernet card (virtio 1.2, section 5.1), with one
receive and one transmit queue and a host side (:class:`Link`) that moves
whole frames: a tap device or passt (:mod:`.net_host`).

Every buffer starts with a 12-byte ``struct virtio_net_hdr`` (with
VIRTIO_F_VERSION_1 it always has ``num_buffers``). pyvmm offers no checksum
or segmentation offloads, so the header is all zeros both ways (but
``num_buffers`` = 1 on receive) and frames are plain Ethernet frames.

Transmit: the driver notifies queue 1; each chain is the header and a
frame, which goes to the link. Receive: the link's descriptor turns
readable on the I/O thread (:meth:`Net.host_ready`); each frame goes into
the next buffer the driver posted on queue 0. With no buffer posted the
frame waits in the link (the host side's own queue) until the driver posts
more and notifies queue 0, as a real card's ring would fill up.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from pyvmm.devices.virtio.backend import ID_NET, VirtioBackend
from pyvmm.devices.virtio.queue import SplitQueue
from pyvmm.errors import UserError

F_MAC = 1 << 5
F_STATUS = 1 << 16
LINK_UP = 1
RX, TX = 0, 1
QUEUE_SIZE = 256
HEADER = 12  # struct virtio_net_hdr with num_buffers (5.1.6)
#: Largest frame taken from the guest: Ethernet with a VLAN tag, no jumbo frames.
MAX_FRAME = 1522
#: Frames received per wakeup before the I/O thread looks at other work.
RX_BATCH = 64
_RX_HEADER = struct.pack("<BBHHHHH", 0, 0, 0, 0, 0, 0, 1)  # num_buffers = 1


class Link(Protocol):
    """A host side for the card: frames in and out, and a descriptor the I/O
    thread waits on for the next frame from the host."""

    #: False once the host side has gone (passt ended).
    up: bool
    #: Kernel command-line words telling the guest its address, if the host
    #: side decides it.
    guest_words: str

    def fileno(self) -> int: ...

    def receive(self) -> bytes | None:
        """The next frame from the host, or None if none is waiting."""

    def send(self, frame: bytes) -> None:
        """A frame from the guest (dropped if the host side cannot take it)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class NetConfig:
    """A ``--net``: ``tap`` with the device's name, or ``user`` (passt)."""

    kind: str
    name: str = ""
    mac: str = ""

    @classmethod
    def parse(cls, text: str, index: int = 0) -> NetConfig:
        """``tap:NAME[,mac=M]`` or ``user[,mac=M]``; the MAC defaults to
        52:54:00:12:34:56 plus the card's index."""
        what, *options = text.split(",")
        mac = f"52:54:00:12:34:{0x56 + index:02x}"
        for option in options:
            if not option.startswith("mac="):
                raise UserError(f"--net {text!r}: unknown option {option!r}")
            mac = option.removeprefix("mac=")
            try:
                parse_mac(mac)
            except ValueError as e:
                raise UserError(f"--net {text!r}: {e}") from None
        if what == "user":
            return cls("user", "", mac)
        if what.startswith("tap:") and what != "tap:":
            return cls("tap", what.removeprefix("tap:"), mac)
        raise UserError(f"--net {text!r}: use tap:NAME or user")


def parse_mac(text: str) -> bytes:
    """``52:54:00:12:34:56`` as six bytes; ValueError if it is not one."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    mac = bytes(int(p, 16) for p in parts)
    if mac[0] & 1:
        raise ValueError(f"{text} is a multicast address")
    return mac


class Net(VirtioBackend):
    """The card: ``link`` is its host side, ``mac`` its address."""

    name = "virtio-net"
    device_id = ID_NET
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, link: Link, mac: bytes) -> None:
        self.link = link
        self.mac = mac
        self._waiting: bytes | None = None  # a frame with no buffer for it yet
        #: For --stats.
        self.frames_in = self.frames_out = self.dropped = 0
        self.bytes_in = self.bytes_out = 0

    def features(self) -> int:
        return F_MAC | F_STATUS

    def config(self) -> bytes:
        # struct virtio_net_config (5.1.4): mac[6], le16 status.
        return self.mac + struct.pack("<H", LINK_UP)

    def host_fd(self) -> int:
        return self.link.fileno()

    def cmdline(self) -> str:
        return self.link.guest_words

    def process(self, queue: SplitQueue) -> None:
        if queue.index == TX:
            self._transmit(queue)
        else:
            self._receive(queue)

    def host_ready(self, queues: list[SplitQueue]) -> bool:
        """The link has frames: give them to the guest's receive buffers.
        False when the I/O thread should stop watching the link until the
        driver posts buffers (none left) or for good (the link went down)."""
        self._receive(queues[RX])
        return self._waiting is None and self.link.up

    def _transmit(self, queue: SplitQueue) -> None:
        while (chain := queue.pop()) is not None:
            length = chain.readable_len - HEADER
            if length <= 0 or length > MAX_FRAME:
                self.dropped += 1
            else:
                frame = chain.read(HEADER, length)
                self.link.send(frame)
                self.frames_out += 1
                self.bytes_out += len(frame)
                if self.kick.note is not None:
                    self.kick.note(f"sent a frame of {len(frame)} bytes")
            queue.push(chain.head, 0)
            self.kick.interrupt(queue)

    def _receive(self, queue: SplitQueue) -> None:
        if not queue.ready:
            return
        for _ in range(RX_BATCH):
            frame = self._waiting if self._waiting is not None else self.link.receive()
            self._waiting = None
            if frame is None:
                return
            if not queue.pending():
                self._waiting = frame  # the driver posts buffers, notifies, and gets it
                return
            chain = queue.pop()
            assert chain is not None
            if chain.writable_len < HEADER + len(frame):
                self.dropped += 1  # a buffer too small for it: the frame is lost
                queue.push(chain.head, 0)
            else:
                chain.write(_RX_HEADER)
                chain.write(frame, HEADER)
                queue.push(chain.head, HEADER + len(frame))
                self.frames_in += 1
                self.bytes_in += len(frame)
                if self.kick.note is not None:
                    self.kick.note(f"received a frame of {len(frame)} bytes")
            self.kick.interrupt(queue)

    def reset(self) -> None:
        self._waiting = None

    def stats(self) -> str:
        return (
            f"{self.frames_out} frames sent ({self.bytes_out} bytes), {self.frames_in} "
            f"received ({self.bytes_in} bytes), {self.dropped} dropped"
        )

    def close(self) -> None:
        self.link.close()
