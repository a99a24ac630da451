"""virtio-console with several ports (virtio 1.2, section 5.3): the channels
of a command that ``pyvmm run -- CMD`` runs in the guest.

Three ports, each a character device in the guest (/dev/vportNpM, named in
/sys/class/virtio-ports/*/name): ``pyvmm.stdin`` carries pyvmm's standard
input to the command, ``pyvmm.stdout`` and ``pyvmm.stderr`` its output to
pyvmm's. No terminal sits in between, so every byte passes as it is, and
the two outputs never mix.

Queues: port 0's receive and transmit queues (0, 1), the control queues
(2: to the driver, 3: from it), then two per further port (4, 5 for
port 1, ...). The control protocol (5.3.6.2): the driver says
DEVICE_READY; the device announces each port (DEVICE_ADD); the driver
answers PORT_READY; the device names it (PORT_NAME) and says whether the
host end is open (PORT_OPEN). When pyvmm's standard input ends, the device
closes the host end of ``pyvmm.stdin`` and the command reads end-of-file.
Linux drops input that arrives at a port nobody in the guest has open, so
input waits until the guest opens ``pyvmm.stdin``.

Output goes to pyvmm's descriptors as the guest writes it; the guest's
write returns once pyvmm has taken the bytes, so everything the command
wrote is out before its exit status is reported.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
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

PORT_NAMES = ("pyvmm.stdin", "pyvmm.stdout", "pyvmm.stderr")
STDIN, STDOUT, STDERR = 0, 1, 2
#: Most input read from the host at a time.
READ_CHUNK = 4096


def rx_queue(port: int) -> int:
    """The queue that carries data to ``port`` in the guest."""
    return 0 if port == 0 else 2 * (port + 1)


def tx_queue(port: int) -> int:
    """The queue that carries data from ``port`` in the guest."""
    return rx_queue(port) + 1


class CommandPorts(VirtioBackend):
    """The three ports, on host descriptors: ``stdin`` (None: the command
    reads end-of-file at once), ``stdout`` and ``stderr``. Output that its
    descriptor no longer takes (a closed pipe) is dropped and counted."""

    name = "virtio-console"
    device_id = ID_CONSOLE
    queue_sizes = (64,) * (2 * (len(PORT_NAMES) + 1))

    def __init__(self, stdin: int | None, stdout: int, stderr: int) -> None:
        self._out = {STDOUT: stdout, STDERR: stderr}
        self._control: deque[bytes] = deque()
        self._guest_open = [False] * len(PORT_NAMES)
        self._pending_in = b""
        self.input_ended = stdin is None
        self._eof_sent = False
        self.bytes_in = 0
        self.bytes_out = {STDOUT: 0, STDERR: 0}
        self.dropped = 0
        # Standard input may be a file or /dev/null, which epoll cannot
        # watch: a thread copies it into a pipe, which it can.
        self._pipe_r: int | None = None
        if stdin is not None:
            self._pipe_r, pipe_w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(self._pipe_r, False)
            threading.Thread(
                target=_copy, args=(stdin, pipe_w), name="pyvmm-stdin", daemon=True
            ).start()

    def features(self) -> int:
        return F_MULTIPORT

    def config(self) -> bytes:
        return _CONFIG.pack(0, 0, len(PORT_NAMES), 0)

    def reset(self) -> None:
        self._control.clear()
        self._guest_open = [False] * len(PORT_NAMES)

    def host_fd(self) -> int | None:
        return self._pipe_r

    def process(self, queue: SplitQueue) -> None:
        if queue.index == CONTROL_TX:
            while (chain := queue.pop()) is not None:
                self._from_driver(chain.read(0, _CONTROL.size))
                queue.push(chain.head, 0)
                self.kick.interrupt(queue)
        elif queue.index in (tx_queue(STDOUT), tx_queue(STDERR)):
            port = STDOUT if queue.index == tx_queue(STDOUT) else STDERR
            while (chain := queue.pop()) is not None:
                self._write(port, chain.read())
                queue.push(chain.head, 0)
                self.kick.interrupt(queue)
        elif queue.index == tx_queue(STDIN):  # the guest wrote to its input: ignored
            while (chain := queue.pop()) is not None:
                queue.push(chain.head, 0)
                self.kick.interrupt(queue)
        self._flush_control(self.kick.queues)

    def host_ready(self, queues: list[SplitQueue]) -> bool:
        """Input is readable (or ended): pass it on while the guest has the
        port open and buffers posted; False until the driver's next notice."""
        if self._eof_sent or not self._guest_open[STDIN] or self._pipe_r is None:
            return False
        if not self._pending_in:
            try:
                self._pending_in = os.read(self._pipe_r, READ_CHUNK)
            except BlockingIOError:
                return True
            if not self._pending_in:
                self.input_ended = True
                self._send_control(STDIN, PORT_OPEN, 0)
                self._eof_sent = True
                self._flush_control(queues)
                return False
        rx = queues[rx_queue(STDIN)]
        while self._pending_in and (chain := rx.pop()) is not None:
            n = chain.write(self._pending_in)
            self._pending_in = self._pending_in[n:]
            self.bytes_in += n
            rx.push(chain.head, n)
            self.kick.interrupt(rx)
        return not self._pending_in

    def _from_driver(self, raw: bytes) -> None:
        if len(raw) < _CONTROL.size:
            return
        port, event, value = _CONTROL.unpack(raw)
        if event == DEVICE_READY and value == 1:
            for p in range(len(PORT_NAMES)):
                self._send_control(p, DEVICE_ADD, 0)
        elif event == PORT_READY and value == 1 and port < len(PORT_NAMES):
            self._send_control(port, PORT_NAME, 0, PORT_NAMES[port].encode())
            host_open = port != STDIN or not self._eof_sent
            self._send_control(port, PORT_OPEN, int(host_open))
        elif event == PORT_OPEN and port < len(PORT_NAMES):
            self._guest_open[port] = bool(value)
            if port == STDIN and value and self.input_ended and self._pipe_r is None:
                self._send_control(STDIN, PORT_OPEN, 0)  # no input at all
                self._eof_sent = True

    def _send_control(self, port: int, event: int, value: int, extra: bytes = b"") -> None:
        self._control.append(_CONTROL.pack(port, event, value) + extra)

    def _flush_control(self, queues: list[SplitQueue]) -> None:
        if not queues or not self._control:
            return
        rx = queues[CONTROL_RX]
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
        return {"guest_open": [int(o) for o in self._guest_open]}

    def restore(self, state: dict[str, Any]) -> None:
        opened = state.get("guest_open", [])
        if not isinstance(opened, list) or len(opened) != len(PORT_NAMES):
            raise ValueError("console ports: guest_open")
        self._guest_open = [bool(o) for o in opened]

    def close(self) -> None:
        if self._pipe_r is not None:
            os.close(self._pipe_r)
            self._pipe_r = None


def _copy(source: int, pipe_w: int) -> None:
    """Standard input into the pipe, until it ends (then the pipe does)."""
    try:
        while data := os.read(source, READ_CHUNK):
            view = memoryview(data)
            while view:
                view = view[os.write(pipe_w, view) :]
    except OSError:
        pass
    finally:
        os.close(pipe_w)
