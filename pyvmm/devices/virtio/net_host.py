"""The host side of virtio-net (``--net``): a tap device, or passt.

``tap:NAME`` attaches to an existing tap device (made with ``ip tuntap add
NAME mode tap``; opening it needs root or CAP_NET_ADMIN): each read or write
of its descriptor is one Ethernet frame.

``user`` starts ``passt`` (Debian package ``passt``), which gives the guest
a network without privileges: it answers DHCP (the guest gets the host's
address on its own side), forwards the guest's TCP and UDP through the
host's own sockets, and maps the gateway address to the host itself, so
the guest reaches the host's 127.0.0.1 services there. pyvmm talks to it
over a Unix stream socket in the format QEMU's ``-netdev stream`` uses:
each frame preceded by its length as a 32-bit big-endian number.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from pyvmm.devices.virtio.net import MAX_FRAME
from pyvmm.errors import UserError
from pyvmm.kvm import lib

#: The largest frame either side hands over (a jumbo frame from the host is dropped).
_READ_SIZE = 65536
_LENGTH = struct.Struct(">I")
#: How long passt gets to create its socket.
PASST_START_SECONDS = 10.0
NOBODY = 65534
#: The guest's side of passt's network, as QEMU's user networking has it:
#: the guest, and the gateway, which passt maps to the host itself.
GUEST_ADDRESS = "10.0.2.15"
GATEWAY = "10.0.2.2"
PREFIX = 24


class Tap:
    """An existing tap device."""

    up = True
    #: The guest configures its own address on a tap's network.
    guest_words = ""

    def __init__(self, name: str) -> None:
        if not name or "/" in name or not Path("/sys/class/net", name, "tun_flags").exists():
            raise UserError(f"--net tap:{name}: no such tap device (ip tuntap add {name} mode tap)")
        fd: int = lib.pyvmm_tap_open(name.encode())
        if fd < 0:
            raise UserError(f"--net tap:{name}: {os.strerror(-fd)}")
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def receive(self) -> bytes | None:
        try:
            return os.read(self.fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None

    def send(self, frame: bytes) -> None:
        # The device is down or its queue is full: the frame is lost, as on a wire.
        with contextlib.suppress(OSError):
            os.write(self.fd, frame)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Passt:
    """A passt process of our own, and the stream to it."""

    #: For the default guest's /init: eth0's address and gateway.
    guest_words = f"pyvmm.net={GUEST_ADDRESS}/{PREFIX},{GATEWAY}"

    def __init__(self) -> None:
        exe = shutil.which("passt")
        if exe is None:
            raise UserError("--net user needs passt: apt-get install passt")
        self._dir = Path(tempfile.mkdtemp(prefix="pyvmm-passt-"))
        path = self._dir / "passt.sock"
        if os.geteuid() == 0:  # passt drops root for nobody, who must create the socket
            os.chown(self._dir, NOBODY, NOBODY)
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self.up = True
        try:
            with open(self._dir / "passt.log", "wb") as log:
                self._proc = subprocess.Popen(
                    [exe, "--foreground", "--quiet", "--one-off", "--ipv4-only",
                     "--socket", str(path), "--address", GUEST_ADDRESS,
                     "--netmask", str(PREFIX), "--gateway", GATEWAY],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                    start_new_session=True,
                )  # fmt: skip
            self._sock = self._connect(path)
        except BaseException:
            self.close()
            raise

    def _connect(self, path: Path) -> socket.socket:
        deadline = time.monotonic() + PASST_START_SECONDS
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                said = (self._dir / "passt.log").read_text(errors="replace").splitlines()
                why = [line for line in said if "syslog" not in line]
                raise UserError(f"--net user: passt ended: {why[-1] if why else 'no reason'}")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise UserError("--net user: passt did not start") from None
                time.sleep(0.02)
                continue
            sock.setblocking(False)
            return sock

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    def receive(self) -> bytes | None:
        assert self._sock is not None
        while True:
            if len(self._buffer) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(self._buffer)
                if len(self._buffer) >= _LENGTH.size + length:
                    frame = bytes(self._buffer[_LENGTH.size : _LENGTH.size + length])
                    del self._buffer[: _LENGTH.size + length]
                    if length > MAX_FRAME:
                        continue  # larger than the guest's buffers: dropped
                    return frame
            try:
                data = self._sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                data = b""
            if not data:
                self.up = False  # passt went away: the link is down
                return None
            self._buffer += data

    def send(self, frame: bytes) -> None:
        assert self._sock is not None
        data = _LENGTH.pack(len(frame)) + frame
        try:
            self._sock.settimeout(5.0)  # passt stalled: give up rather than hold the guest
            self._sock.sendall(data)
        except OSError:
            pass
        finally:
            self._sock.setblocking(False)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(2)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)
