"""virtio-net without KVM: frames through the queues to a host side that
is a plain list, the receive path when the driver has posted no buffers,
the options, and the host sides' one-line errors."""

from __future__ import annotations

import pytest

from pyvmm.devices.virtio import net, net_host
from pyvmm.devices.virtio.backend import F_VERSION_1
from pyvmm.devices.virtio.mmio import VirtioMmio
from pyvmm.errors import UserError
from tests.virtio_driver import Driver, ram

FRAME = bytes(range(14)) + b"payload" * 20


class FakeLink:
    up = True
    guest_words = ""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.incoming: list[bytes] = []

    def fileno(self) -> int:
        return -1

    def receive(self) -> bytes | None:
        return self.incoming.pop(0) if self.incoming else None

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def close(self) -> None:
        pass


def card() -> tuple[Driver, FakeLink]:
    link = FakeLink()
    memory = ram()
    d = Driver(VirtioMmio(net.Net(link, net.parse_mac("52:54:00:12:34:56")), memory), memory)
    d.start(features=F_VERSION_1 | net.F_MAC)
    return d, link


def test_the_mac_is_in_the_config_space() -> None:
    d, _ = card()
    assert d.device.read(0x100, 6) == bytes.fromhex("525400123456")
    assert d.device.read(0x106, 2) == b"\x01\x00"  # link up


def test_a_frame_from_the_guest_reaches_the_link_without_its_header() -> None:
    d, link = card()
    d.chain(net.TX, [bytes(net.HEADER) + FRAME], [])
    assert link.sent == [FRAME]
    d.chain(net.TX, [bytes(net.HEADER)], [])  # a header and nothing else: dropped
    d.chain(net.TX, [bytes(net.HEADER) + bytes(2000)], [])  # larger than Ethernet: dropped
    assert link.sent == [FRAME]
    assert "2 dropped" in d.device.stats()


def test_frames_wait_for_buffers_and_then_arrive() -> None:
    d, link = card()
    link.incoming = [FRAME, FRAME[::-1]]
    assert d.device.host_ready() is False  # no buffer posted: stop watching the link
    d.chain(net.RX, [], [2048])  # posting one and notifying delivers the waiting frame
    assert d.used(net.RX)[-1] == (0, net.HEADER + len(FRAME))
    got = d.memory.read(d.next_buffer - 0x1000, net.HEADER + len(FRAME))
    assert got[: net.HEADER] == bytes(10) + b"\x01\x00"  # num_buffers = 1
    assert got[net.HEADER :] == FRAME
    d.chain(net.RX, [], [2048])
    assert d.device.host_ready() is True  # everything delivered: keep watching
    assert d.memory.read(d.next_buffer - 0x1000 + net.HEADER, len(FRAME)) == FRAME[::-1]


def test_a_buffer_too_small_loses_the_frame_not_the_device() -> None:
    d, link = card()
    link.incoming = [FRAME]
    d.chain(net.RX, [], [64])
    assert d.used(net.RX)[-1] == (0, 0)
    assert "1 dropped" in d.device.stats()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user", net.NetConfig("user", "", "52:54:00:12:34:56")),
        ("tap:tap0,mac=52:54:00:00:00:01", net.NetConfig("tap", "tap0", "52:54:00:00:00:01")),
    ],
)
def test_net_options(text: str, expected: net.NetConfig) -> None:
    assert net.NetConfig.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("tap:", "use tap:NAME or user"),
        ("bridge", "use tap:NAME or user"),
        ("user,mac=01:00:00:00:00:00", "multicast"),
        ("user,mac=xx", "not a MAC address"),
        ("user,speed=10", "unknown option"),
    ],
)
def test_bad_net_options(text: str, words: str) -> None:
    with pytest.raises(UserError, match=words):
        net.NetConfig.parse(text)


def test_a_missing_tap_or_passt_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="no such tap device"):
        net_host.Tap("pyvmm-none0")
    monkeypatch.setattr(net_host.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="apt-get install passt"):
        net_host.Passt()
