"""virtio-fs (virtio 1.2, section 5.11): a host directory as a guest file
system, the FUSE protocol carried over virtqueues and served by pyvmm's own
:class:`~pyvmm.devices.fuse.server.FuseServer` (no virtiofsd).

Queue 0 is the high-priority queue (FORGET and INTERRUPT, which get no
reply), queue 1 the one request queue. Each chain holds a request in its
device-readable buffers and room for the reply in its device-writable
ones. The configuration space names the share by its tag, which the guest
mounts: ``mount -t virtiofs TAG DIR``.

``--share HOST_DIR[:GUEST_DIR][,ro]`` makes one (:class:`ShareConfig`); the
default guest's /init mounts each share named by a ``pyvmm.share=``
command-line word.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from typing import Any

from pyvmm.devices.fuse.protocol import OPCODE_NAMES, OUT_HEADER, BadRequest, Request
from pyvmm.devices.fuse.server import FuseServer, raise_open_files_limit
from pyvmm.devices.virtio.backend import ID_FS, VirtioBackend
from pyvmm.devices.virtio.queue import SplitQueue
from pyvmm.errors import UserError

#: struct virtio_fs_config: char tag[36]; le32 num_request_queues (5.11.4).
TAG_BYTES = 36
_CONFIG = struct.Struct(f"<{TAG_BYTES}sI")
#: Largest request taken (a WRITE of MAX_WRITE plus its headers, with room).
MAX_REQUEST = 256 * 1024


@dataclass(frozen=True)
class ShareConfig:
    """A ``--share``: the host directory, where the guest mounts it, whether
    the guest may change it, and the tag the guest mounts it by."""

    host: str
    guest: str
    readonly: bool = False
    tag: str = "pyvmm0"

    @classmethod
    def parse(cls, text: str, index: int = 0) -> ShareConfig:
        """``HOST_DIR[:GUEST_DIR][,ro]``; the guest directory defaults to the
        host's path. UserError (one line) for a missing directory or a
        guest path that is not absolute."""
        spec, *options = text.split(",")
        readonly = False
        for option in options:
            if option not in ("ro", "readonly"):
                raise UserError(f"--share {text!r}: unknown option {option!r}")
            readonly = True
        host, _, guest = spec.partition(":")
        if not host:
            raise UserError("--share needs a directory: --share HOST_DIR[:GUEST_DIR][,ro]")
        if not os.path.isdir(host):
            what = "not a directory" if os.path.exists(host) else "no such directory"
            raise UserError(f"--share {host}: {what}")
        host = os.path.realpath(host)
        guest = guest or host
        if not guest.startswith("/") or any(c.isspace() or c == ":" for c in guest):
            raise UserError(
                f"--share {text!r}: the guest directory must be absolute, without spaces or ':'"
            )
        return cls(host, guest, readonly, f"pyvmm{index}")

    def word(self) -> str:
        """The command-line word that asks the default guest's /init to mount
        it (none for a share without a guest directory: one kept in a
        snapshot, to be mounted once a restore gives it a directory)."""
        if not self.guest:
            return ""
        return f"pyvmm.share={self.tag}:{self.guest}{':ro' if self.readonly else ''}"


class Fs(VirtioBackend):
    name = "virtio-fs"
    device_id = ID_FS
    queue_sizes = (128, 128)

    def __init__(self, share: ShareConfig) -> None:
        raise_open_files_limit()
        self.share = share
        try:
            self.server = FuseServer(share.host, readonly=share.readonly)
        except OSError as e:
            raise UserError(f"--share {share.host}: {e.strerror}") from None

    def config(self) -> bytes:
        return _CONFIG.pack(self.share.tag.encode(), 1)

    def cmdline(self) -> str:
        return self.share.word()

    def process(self, queue: SplitQueue) -> None:
        while (chain := queue.pop()) is not None:
            request = chain.read(0, min(chain.readable_len, MAX_REQUEST))
            answer = self.server.serve(request)
            if answer is not None and len(answer) > chain.writable_len:
                # No room for the reply: the request fails with EIO instead.
                _, _, unique = OUT_HEADER.unpack_from(answer)
                answer = OUT_HEADER.pack(OUT_HEADER.size, -errno.EIO, unique)
            written = chain.write(answer) if answer is not None else 0
            queue.push(chain.head, written)
            self.kick.interrupt(queue)
            if self.kick.note is not None:
                self.kick.note(_describe(request, answer))

    def stats(self) -> str:
        s = self.server
        top = ", ".join(f"{n} {name}" for name, n in s.counts.most_common(4))
        return (
            f"{self.share.tag} {self.share.host}: {sum(s.counts.values())} requests ({top}), "
            f"{s.errors} errors, {s.bytes_read} bytes read, {s.bytes_written} written"
        )

    def reset(self) -> None:
        """A driver that starts over starts with a fresh INIT and no nodes."""
        self.server.reset()

    def state(self) -> dict[str, Any]:
        return self.server.state()

    def restore(self, state: dict[str, Any]) -> None:
        self.server.restore(state)

    def close(self) -> None:
        self.server.close()


def _describe(request: bytes, answer: bytes | None) -> str:
    try:
        r = Request.parse(request)
    except BadRequest:
        return f"{len(request)}-byte request that is not FUSE"
    op = OPCODE_NAMES.get(r.opcode, str(r.opcode))
    if answer is None:
        return f"{op} node {r.nodeid}"
    _, error, _ = OUT_HEADER.unpack_from(answer)
    result = f"error {-error}" if error else f"{len(answer)} bytes"
    return f"{op} node {r.nodeid}: {result}"
