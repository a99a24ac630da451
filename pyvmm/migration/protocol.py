"""The live-migration stream: what source and destination say to each other.

Every message is a frame: one byte of type, a little-endian u32 length,
the payload, and a CRC-32 of type, length and payload (zlib's), so a
damaged frame is caught wherever it is. In order:

    source -> destination  HELLO     JSON: format and version, memory, vCPUs,
                                     each vCPU's CPUID, the kernel
    destination -> source  ACCEPT    empty; or REFUSE, JSON {"reason": ...}
    source -> destination  PAGES     a batch of guest pages, any number of times:
                                     u8 round, u16 count, then per page a u64
                                     guest address with bit 0 set for "all
                                     zero" (no data follows) or clear (4 KiB
                                     of data follow)
    source -> destination  ROUND     u8 round number, u64 pages sent in it
    source -> destination  STATE     the state file (pyvmm.snapshot.format),
                                     then 32 bytes of its SHA-256
    destination -> source  RESUMED   the guest runs there; or FAILED, JSON
                                     {"reason": ...}

Addresses: ``unix:PATH`` or ``tcp:HOST:PORT`` (:func:`parse_address`).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from pyvmm.errors import MigrationError, UserError

__all__ = ["Address", "Channel", "MigrationError", "parse_address"]

HELLO, ACCEPT, REFUSE, PAGES, ROUND, STATE, RESUMED, FAILED = range(1, 9)
NAMES = {1: "HELLO", 2: "ACCEPT", 3: "REFUSE", 4: "PAGES", 5: "ROUND", 6: "STATE",
         7: "RESUMED", 8: "FAILED"}  # fmt: skip
PAGE = 4096
#: Pages per PAGES frame: 1 MiB of data at most.
BATCH = 256
#: Largest frame accepted: a batch of pages, or a state file.
MAX_FRAME = 64 << 20
_HEAD = struct.Struct("<BI")
_CRC = struct.Struct("<I")
ZERO_FLAG = 1
VERSION = 1


@dataclass(frozen=True)
class Address:
    kind: str  # "unix" or "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``unix:PATH`` or ``tcp:HOST:PORT``; UserError otherwise."""
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest:
        return Address("unix", path=rest)
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isascii() and port.isdigit() and 0 < int(port) < 65536:
            return Address("tcp", host=host.strip("[]"), port=int(port))
    raise UserError(f"invalid migration address {text!r}: use unix:PATH or tcp:HOST:PORT")


class Channel:
    """Frames over a connected stream socket. Every receive has a timeout."""

    def __init__(self, sock: socket.socket, timeout: float = 30.0) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        #: Bytes this side sent and received, frames included.
        self.sent = 0
        self.received = 0
        #: Whether any guest page has come in (after that, no refusal).
        self.received_pages = False

    def send(self, kind: int, payload: bytes = b"") -> None:
        head = _HEAD.pack(kind, len(payload))
        crc = zlib.crc32(payload, zlib.crc32(head))
        try:
            self.sock.sendall(head)
            self.sock.sendall(payload)
            self.sock.sendall(_CRC.pack(crc))
        except OSError as e:
            raise MigrationError(
                f"the connection failed while sending: {e.strerror or e}"
            ) from None
        self.sent += len(head) + len(payload) + _CRC.size

    def _exactly(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except TimeoutError:
                raise MigrationError("the other side went silent") from None
            except OSError as e:
                raise MigrationError(f"the connection failed: {e.strerror or e}") from None
            if not chunk:
                raise MigrationError("the other side closed the connection")
            buf += chunk
        self.received += n
        return bytes(buf)

    def receive(self) -> tuple[int, bytes]:
        head = self._exactly(_HEAD.size)
        kind, length = _HEAD.unpack(head)
        if kind not in NAMES or length > MAX_FRAME:
            raise MigrationError(f"a malformed frame (type {kind}, {length} bytes)")
        payload = self._exactly(length)
        (crc,) = _CRC.unpack(self._exactly(_CRC.size))
        if crc != zlib.crc32(payload, zlib.crc32(head)):
            raise MigrationError(f"a {NAMES[kind]} frame failed its checksum")
        return kind, payload

    def expect(self, *kinds: int) -> tuple[int, bytes]:
        kind, payload = self.receive()
        if kind not in kinds:
            if kind in (REFUSE, FAILED):
                raise MigrationError(json_payload(payload).get("reason", "refused"))
            raise MigrationError(f"expected {'/'.join(NAMES[k] for k in kinds)}, got {NAMES[kind]}")
        return kind, payload

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def json_frame(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


def json_payload(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MigrationError("a malformed JSON frame") from None
    if not isinstance(value, dict):
        raise MigrationError("a malformed JSON frame")
    return value


def pages_frame(round_no: int, pages: list[tuple[int, bytes | None]]) -> bytes:
    """A PAGES payload: (guest address, data or None for an all-zero page)."""
    out = bytearray(struct.pack("<BH", round_no, len(pages)))
    for gpa, data in pages:
        if data is None:
            out += struct.pack("<Q", gpa | ZERO_FLAG)
        else:
            out += struct.pack("<Q", gpa)
            out += data
    return bytes(out)


def read_pages(payload: bytes) -> tuple[int, list[tuple[int, memoryview | None]]]:
    """The pages of a PAGES payload; MigrationError if it does not add up."""
    view = memoryview(payload)
    if len(view) < 3:
        raise MigrationError("a PAGES frame is too short")
    round_no, count = struct.unpack_from("<BH", view)
    at = 3
    pages: list[tuple[int, memoryview | None]] = []
    for _ in range(count):
        if at + 8 > len(view):
            raise MigrationError("a PAGES frame is cut short")
        (word,) = struct.unpack_from("<Q", view, at)
        at += 8
        if word & ZERO_FLAG:
            pages.append((word & ~ZERO_FLAG, None))
            continue
        if word % PAGE or at + PAGE > len(view):
            raise MigrationError("a PAGES frame holds a page out of place")
        pages.append((word, view[at : at + PAGE]))
        at += PAGE
    if at != len(view):
        raise MigrationError("a PAGES frame has bytes after its pages")
    return round_no, pages
