"""virtio-console with several ports (virtio 1.2, section 5.3): the channels
of a command that ``pyvmm run -- CMD`` runs in the guest.

Four ports, each a character device in the guest (/dev/vportNpM, named in
/sys/class/virtio-ports/*/name): ``pyvmm.stdin`` carries pyvmm's standard
input to the command, ``pyvmm.stdout`` and ``pyvmm.stderr`` its output to
pyvmm's, and ``pyvmm.control`` carries one line: the command, to a guest
restored from a snapshot in which /init waits for it. No terminal sits in
between, so every byte passes as it is, and the two outputs never mix.

Queues: port 0's receive and transmit queues (0, 1), the control queues
(2: to the driver, 3: from it), then two per further port (4, 5 for
port 1, ...). The control protocol (5.3.6.2): the driver says
DEVICE_READY; the device announces each port (DEVICE_ADD); the driver
answers PORT_READY; the device names it (PORT_NAME) and says the host end
is open (PORT_OPEN). When pyvmm's standard input ends, the device closes
the host end of ``pyvmm.stdin`` and the command reads end-of-file. Linux
drops input that arrives at a port nobody in the guest has open, so input
waits until the guest opens it.

Output goes to pyvmm's descriptors as the guest writes it; Linux's write
returns once the device has taken the bytes, so everything the command
wrote is out before /init reports its exit status. Linux waits for that by
spinning, so this device's queue notifications are served on the vCPU
that makes them (``notify_on_vcpu``), not by the I/O thread.
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from pyvmm.devices.virtio.backend import VirtioBackend
from pyvmm.devices.virtio.queue import SplitQueue

ID_CONSOLE = 3
F_MULTIPORT = 1 << 1
#: struct virtio_console_config: cols, rows, max_nr_ports, emerg_wr.
_CONFIG = struct.Struct("<HHII")
#: struct virtio_console_control: id, event, value.
_CONTROL = struct.Struct("<IHH")
DEVICE_READY, DEVICE_ADD, PORT_READY, PORT_OPEN, PORT_NAME = 0, 1, 3, 6, 7
CONTROL_RX, CONTROL_TX = 2, 3
_EVENTS = {DEVICE_READY: "DEVICE_READY", PORT_READY: "PORT_READY", PORT_OPEN: "PORT_OPEN"}

PORT_NAMES = ("pyvmm.stdin", "pyvmm.stdout", "pyvmm.stderr", "pyvmm.control")
STDIN, STDOUT, STDERR, CONTROL = 0, 1, 2, 3
#: Input read from the host at a time, and most held for the guest.
READ_CHUNK = 4096
INPUT_HELD = 64 * 1024


def rx_queue(port: int) -> int:
    """The queue that carries data to ``port`` in the guest."""
    return 0 if port == 0 else 2 * (port + 1)


def tx_queue(port: int) -> int:
    """The queue that carries data from ``port`` in the guest."""
    return rx_queue(port) + 1


@dataclass(frozen=True)
class CommandIO:
    """Where a command's streams go on the host: ``stdin`` (None: the
    command reads end-of-file), ``stdout``, ``stderr``; ``control``: the
    line for ``pyvmm.control`` (empty: none)."""

    stdin: int | None
    stdout: int
    stderr: int
    control: bytes = b""


class CommandPorts(VirtioBackend):
    """The four ports on the host descriptors ``io`` names. Output that its
    descriptor no longer takes (a closed pipe) is dropped and counted."""

    name = "virtio-console"
    device_id = ID_CONSOLE
    queue_sizes = (64,) * (2 * (len(PORT_NAMES) + 1))
    #: Linux's virtio_console spins after each write and control message
    #: until the buffer comes back (virtio_console.c, __send_to_port).
    notify_on_vcpu = True

    def __init__(self, io: CommandIO) -> None:
        self._out = {STDOUT: io.stdout, STDERR: io.stderr}
        self._control: deque[bytes] = deque()
        self._guest_open = [False] * len(PORT_NAMES)
        self._cond = threading.Condition()
        self._input = bytearray()
        self._input_ended = io.stdin is None
        self._eof_sent = False
        self._line = io.control
        self.bytes_in = 0
        self.bytes_out = {STDOUT: 0, STDERR: 0}
        self.dropped = 0
        # The I/O thread watches this eventfd: standard input arrived (a
        # thread reads it, since a file or /dev/null cannot be polled) or a
        # control line waits.
        self._wake = os.eventfd(1, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._closed = False
        if io.stdin is not None:
            threading.Thread(
                target=self._copy_input, args=(io.stdin,), name="pyvmm-stdin", daemon=True
            ).start()

    def features(self) -> int:
        return F_MULTIPORT

    def config(self) -> bytes:
        return _CONFIG.pack(0, 0, len(PORT_NAMES), 0)

    def reset(self) -> None:
        self._control.clear()
        self._guest_open = [False] * len(PORT_NAMES)

    def host_fd(self) -> int | None:
        return self._wake

    def process(self, queue: SplitQueue) -> None:
        port = next((p for p in range(len(PORT_NAMES)) if tx_queue(p) == queue.index), None)
        while (queue.index == CONTROL_TX or port is not None) and (chain := queue.pop()):
            if queue.index == CONTROL_TX:
                self._from_driver(chain.read(0, _CONTROL.size))
            elif port in (STDOUT, STDERR):
                data = chain.read()
                self._write(port, data)
                self._note(f"{len(data)} bytes from {PORT_NAMES[port]}")
            queue.push(chain.head, 0)  # (what the guest writes to its input is ignored)
            self.kick.interrupt(queue)
        self._flush_control()

    def host_ready(self, queues: list[SplitQueue]) -> bool:
        """Input or the control line waits: pass them on while the guest has
        the port open and buffers posted. False (the eventfd left set): wait
        for the driver's next notice."""
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._wake)
        if self._line and self._guest_open[CONTROL]:
            self._line = self._give(queues[rx_queue(CONTROL)], self._line)
            if not self._line:
                self._note("the command went to pyvmm.control")
        with self._cond:
            if self._input and self._guest_open[STDIN]:
                rest = self._give(queues[rx_queue(STDIN)], bytes(self._input))
                self.bytes_in += len(self._input) - len(rest)
                self._input = bytearray(rest)
                self._cond.notify()
            if not self._input and self._input_ended and not self._eof_sent:
                self._send_control(STDIN, PORT_OPEN, 0)
                self._eof_sent = True
            waiting = bool(self._line or self._input)
        self._flush_control()
        if waiting:
            self._signal()
        return not waiting

    def _give(self, rx: SplitQueue, data: bytes) -> bytes:
        """As much of ``data`` as the posted buffers take; returns the rest."""
        while data and (chain := rx.pop()) is not None:
            n = chain.write(data)
            data = data[n:]
            rx.push(chain.head, n)
            self.kick.interrupt(rx)
        return data

    def _copy_input(self, source: int) -> None:
        """Standard input into the buffer the I/O thread empties."""
        try:
            while data := os.read(source, READ_CHUNK):
                with self._cond:
                    while len(self._input) >= INPUT_HELD:
                        self._cond.wait()
                    self._input += data
                self._signal()
        except OSError:
            pass
        with self._cond:
            self._input_ended = True
        self._signal()

    def _signal(self) -> None:
        """Wake the I/O thread, unless the device is closed (its eventfd's
        number may by then be another descriptor's)."""
        with self._cond:
            if not self._closed:
                os.eventfd_write(self._wake, 1)

    def _from_driver(self, raw: bytes) -> None:
        if len(raw) < _CONTROL.size:
            return
        port, event, value = _CONTROL.unpack(raw)
        self._note(f"driver: {_EVENTS.get(event, str(event))} port {port} value {value}")
        if event == DEVICE_READY and value == 1:
            for p in range(len(PORT_NAMES)):
                self._send_control(p, DEVICE_ADD, 0)
        elif event == PORT_READY and value == 1 and port < len(PORT_NAMES):
            self._send_control(port, PORT_NAME, 0, PORT_NAMES[port].encode())
            self._send_control(port, PORT_OPEN, int(port != STDIN or not self._eof_sent))
        elif event == PORT_OPEN and port < len(PORT_NAMES):
            self._guest_open[port] = bool(value)
            if value:
                self._signal()  # what waited for it can go

    def _note(self, text: str) -> None:
        if self.kick.note is not None:
            self.kick.note(text)

    def _send_control(self, port: int, event: int, value: int, extra: bytes = b"") -> None:
        self._control.append(_CONTROL.pack(port, event, value) + extra)

    def _flush_control(self) -> None:
        if not self._control or not self.kick.queues:
            return
        rx = self.kick.queues[CONTROL_RX]
        while self._control and (chain := rx.pop()) is not None:
            n = chain.write(self._control.popleft())
            rx.push(chain.head, n)
            self.kick.interrupt(rx)

    def _write(self, port: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._out[port], view)
            except BlockingIOError:
                select.select([], [self._out[port]], [], 1.0)
                continue
            except OSError:
                self.dropped += len(view)
                return
            self.bytes_out[port] += n
            view = view[n:]

    def stats(self) -> str:
        return (
            f"command input {self.bytes_in} bytes, output {self.bytes_out[STDOUT]} bytes, "
            f"errors {self.bytes_out[STDERR]} bytes, {self.dropped} dropped"
        )

    def state(self) -> dict[str, Any]:
        return {
            "guest_open": [int(o) for o in self._guest_open],
            "control": [m.hex() for m in self._control],
        }

    def restore(self, state: dict[str, Any]) -> None:
        opened, pending = state.get("guest_open"), state.get("control", [])
        if not isinstance(opened, list) or len(opened) != len(PORT_NAMES):
            raise ValueError("console ports: guest_open")
        if not isinstance(pending, list) or len(pending) > 4 * len(PORT_NAMES):
            raise ValueError("console ports: control")
        try:
            self._control = deque(bytes.fromhex(str(m)) for m in pending)
        except ValueError:
            raise ValueError("console ports: control") from None
        self._guest_open = [bool(o) for o in opened]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            os.close(self._wake)
