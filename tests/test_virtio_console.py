"""The command's ports (virtio-console, several ports) over the virtio-mmio
transport, driven as Linux's virtio_console driver drives them."""

from __future__ import annotations

import os
import struct
import time

from pyvmm.devices.virtio import console
from pyvmm.devices.virtio.console import CommandIO, CommandPorts, rx_queue, tx_queue
from pyvmm.devices.virtio.mmio import CONFIG, VirtioMmio
from tests.virtio_driver import Driver, ram

CONTROL = struct.Struct("<IHH")


class Ports:
    def __init__(self, stdin: int | None, control: bytes = b"") -> None:
        self.out_r, out_w = os.pipe()
        self.err_r, err_w = os.pipe()
        memory = ram()
        self.backend = CommandPorts(CommandIO(stdin, out_w, err_w, control))
        self.d = Driver(VirtioMmio(self.backend, memory), memory)
        self.d.start(console.F_MULTIPORT | 1 << 32)
        self.seen = 0

    def post(self, queue: int, size: int = 256) -> int:
        """A device-writable buffer; returns its guest address."""
        gpa, _ = self.d.buffer(size)
        self.d.descriptors(queue, [(gpa, size, 2, 0)])
        self.d.offer(queue, 0)
        return gpa

    def send(self, queue: int, data: bytes) -> None:
        gpa, n = self.d.buffer(data)
        self.d.descriptors(queue, [(gpa, n, 0, 0)])
        self.d.offer(queue, 0)

    def control(self, port: int, event: int, value: int) -> None:
        self.send(console.CONTROL_TX, CONTROL.pack(port, event, value))

    def received(self, queue: int, gpa: int) -> bytes:
        _, length = self.d.used(queue)[-1]
        return self.d.memory.read(gpa, length)


def test_ports_are_announced_named_and_opened() -> None:
    p = Ports(None)
    assert struct.unpack("<HHII", p.d.device.read(CONFIG, 12))[2] == 4  # max_nr_ports
    messages = []
    for _ in range(4):
        gpa = p.post(console.CONTROL_RX)
        if not messages:
            p.control(0, console.DEVICE_READY, 1)
        messages.append(p.received(console.CONTROL_RX, gpa))
    assert [CONTROL.unpack(m)[:2] for m in messages] == [(i, console.DEVICE_ADD) for i in range(4)]
    gpa_name, gpa_open = p.post(console.CONTROL_RX), 0
    p.control(1, console.PORT_READY, 1)
    assert p.received(console.CONTROL_RX, gpa_name)[8:] == b"pyvmm.stdout"
    gpa_open = p.post(console.CONTROL_RX)
    p.backend.host_ready(p.d.device.queues)
    assert CONTROL.unpack(p.received(console.CONTROL_RX, gpa_open)) == (1, console.PORT_OPEN, 1)


def test_output_goes_to_its_descriptor_byte_for_byte() -> None:
    p = Ports(None)
    blob = bytes(range(256)) * 4
    p.send(tx_queue(console.STDOUT), blob)
    p.send(tx_queue(console.STDERR), b"oops\n")
    assert os.read(p.out_r, 4096) == blob
    assert os.read(p.err_r, 4096) == b"oops\n"


def test_input_waits_for_the_guest_then_ends_with_the_host_end_closed() -> None:
    r, w = os.pipe()
    os.write(w, b"typed\n")
    os.close(w)
    p = Ports(r, control=b"pyvmm.cmd64=dHJ1ZQ==\n")
    rx = p.post(rx_queue(console.STDIN))
    for _ in range(50):  # the reader thread has the input and its end
        p.backend.host_ready(p.d.device.queues)
        time.sleep(0.01)
    assert p.d.used(rx_queue(console.STDIN)) == []  # dropped by Linux until opened
    p.control(console.STDIN, console.PORT_OPEN, 1)
    p.control(console.CONTROL, console.PORT_OPEN, 1)
    line = p.post(rx_queue(console.CONTROL))
    eof = p.post(console.CONTROL_RX)
    p.backend.host_ready(p.d.device.queues)
    assert p.received(rx_queue(console.STDIN), rx) == b"typed\n"
    assert p.received(rx_queue(console.CONTROL), line) == b"pyvmm.cmd64=dHJ1ZQ==\n"
    assert CONTROL.unpack(p.received(console.CONTROL_RX, eof)) == (0, console.PORT_OPEN, 0)
    p.backend.close()
