"""Virtio without KVM: split queues, the virtio-mmio transport, virtio-blk
and virtio-rng, driven by a small driver (tests/virtio_driver.py) over
guest RAM, and a driver that breaks the rules."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.devices.virtio import blk, mmio, net, queue
from pyvmm.devices.virtio.backend import F_EVENT_IDX, F_VERSION_1
from pyvmm.devices.virtio.mmio import Reg, VirtioMmio
from pyvmm.devices.virtio.rng import Rng
from pyvmm.errors import UserError
from tests.virtio_driver import BUFFERS_AT, RAM, Driver, ram

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))


def rng_driver() -> Driver:
    memory = ram()
    return Driver(VirtioMmio(Rng(), memory), memory)


def disk(tmp_path: Path, size: int = 64 * 1024, **options: object) -> blk.DiskConfig:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * (size // 256))
    return blk.DiskConfig(str(path), **options)  # type: ignore[arg-type]


def blk_driver(config: blk.DiskConfig) -> Driver:
    memory = ram()
    return Driver(VirtioMmio(blk.Block(config), memory), memory)


# -- the transport ----------------------------------------------------------------


def test_registers_say_what_the_device_is() -> None:
    d = rng_driver()
    assert d.reg(Reg.MAGIC_VALUE) == 0x74726976  # "virt"
    assert d.reg(Reg.VERSION) == 2
    assert d.reg(Reg.DEVICE_ID) == 4
    d.set(Reg.QUEUE_SEL, 0)
    assert d.reg(Reg.QUEUE_NUM_MAX) == 64
    d.set(Reg.QUEUE_SEL, 1)
    assert d.reg(Reg.QUEUE_NUM_MAX) == 0  # no such queue
    assert d.device.read(Reg.MAGIC_VALUE, 2) == b"\0\0"  # registers are read 32 bits wide


def test_features_without_version_1_are_refused() -> None:
    d = rng_driver()
    assert not d.negotiate(features=0)  # a legacy driver: FEATURES_OK does not stick
    assert d.negotiate(features=F_VERSION_1)
    d2 = rng_driver()
    assert not d2.negotiate(features=F_VERSION_1 | 1 << 40)  # a bit never offered


def test_rng_fills_the_buffer_and_interrupts() -> None:
    d = rng_driver()
    d.start()
    d.chain(0, [], [64])
    assert d.used(0) == [(0, 64)]
    assert d.memory.read(BUFFERS_AT, 64) != bytes(64)
    assert d.interrupts[-2:] == [True, False]  # an edge
    assert d.interrupts.count(True) == 1
    assert d.reg(Reg.INTERRUPT_STATUS) == mmio.INT_USED_BUFFER
    d.set(Reg.INTERRUPT_ACK, mmio.INT_USED_BUFFER)
    assert d.reg(Reg.INTERRUPT_STATUS) == 0


def test_chains_made_available_before_driver_ok_are_served_then() -> None:
    d = rng_driver()
    assert d.negotiate()
    d.setup_queue(0)
    d.chain(0, [], [16])
    assert d.used(0) == []
    d.set(Reg.STATUS, d.reg(Reg.STATUS) | mmio.DRIVER_OK)
    assert d.used(0) == [(0, 16)]


def test_no_interrupt_flag_and_event_idx() -> None:
    d = rng_driver()
    d.start(features=F_VERSION_1)
    _, avail, _ = d.areas(0)
    d.memory.write(avail, struct.pack("<H", queue.AVAIL_F_NO_INTERRUPT))
    d.chain(0, [], [8])
    assert True not in d.interrupts
    e = rng_driver()
    e.start(features=F_VERSION_1 | F_EVENT_IDX)
    e.chain(0, [], [8])  # the first used buffer always interrupts
    used_event = avail + 4 + 2 * e.size
    e.memory.write(used_event, struct.pack("<H", 5))  # "not before the 6th"
    for _ in range(4):
        e.chain(0, [], [8])
    assert e.interrupts.count(True) == 1
    e.chain(0, [], [8])  # the 6th used element passes used_event
    assert e.interrupts.count(True) == 2
    _, _, used = e.areas(0)
    avail_event = struct.unpack("<H", e.memory.read(used + 4 + 8 * e.size, 2))[0]
    assert avail_event == 6  # the device asks to hear of the next one


def test_a_queue_outside_ram_needs_a_reset() -> None:
    d = rng_driver()
    assert d.negotiate()
    d.set(Reg.QUEUE_SEL, 0)
    d.set(Reg.QUEUE_NUM, 16)
    d.set(Reg.QUEUE_DESC_LOW, RAM - 8)
    d.set(Reg.QUEUE_READY, 1)
    assert d.reg(Reg.QUEUE_READY) == 0
    assert d.reg(Reg.STATUS) & mmio.DEVICE_NEEDS_RESET
    assert d.reg(Reg.INTERRUPT_STATUS) & mmio.INT_CONFIG
    assert "not in RAM" in d.device.last_error
    d.set(Reg.STATUS, 0)  # a reset clears it
    assert d.reg(Reg.STATUS) == 0


@pytest.mark.parametrize("size", [0, 3, 128])
def test_a_queue_size_that_is_not_a_power_of_2_up_to_the_maximum(size: int) -> None:
    d = rng_driver()
    assert d.negotiate()
    d.setup_queue(0, size)
    assert d.reg(Reg.STATUS) & mmio.DEVICE_NEEDS_RESET


# -- chains that break the rules ------------------------------------------------------

WRITE, NEXT, INDIRECT = queue.DESC_F_WRITE, queue.DESC_F_NEXT, queue.DESC_F_INDIRECT


@pytest.mark.parametrize(
    "descs, words",
    [
        ([(BUFFERS_AT, 8, WRITE | NEXT, 0)], "longer than its table"),  # a loop
        ([(BUFFERS_AT, 8, WRITE | NEXT, 99)], "beyond its table"),
        ([(RAM - 4, 8, WRITE, 0)], "outside RAM"),
        ([(BUFFERS_AT, 8, WRITE | NEXT, 1), (BUFFERS_AT, 8, 0, 0)], "readable buffer after"),
        ([(BUFFERS_AT, 16, INDIRECT | NEXT, 1), (BUFFERS_AT, 8, WRITE, 0)], "not alone"),
        ([(BUFFERS_AT, 17, INDIRECT, 0)], "indirect table of 17 bytes"),
        ([(RAM - 16, 32, INDIRECT, 0)], "outside RAM"),
    ],
)
def test_a_bad_chain_stops_the_queue_and_asks_for_a_reset(
    descs: list[tuple[int, int, int, int]], words: str
) -> None:
    d = rng_driver()
    d.start()
    d.descriptors(0, descs)
    d.offer(0, 0)
    assert d.reg(Reg.STATUS) & mmio.DEVICE_NEEDS_RESET
    assert words in d.device.last_error
    assert d.used(0) == []
    d.chain(0, [], [8])  # nothing more is served until the driver resets it
    assert d.used(0) == []


def test_an_indirect_table_inside_an_indirect_table() -> None:
    d = rng_driver()
    d.start()
    table = BUFFERS_AT + 0x10000
    d.memory.write(table, struct.pack("<QIHH", table, 16, INDIRECT, 0))
    d.descriptors(0, [(table, 16, INDIRECT, 0)])
    d.offer(0, 0)
    assert "inside an indirect table" in d.device.last_error


def test_an_indirect_table_as_long_as_the_queue() -> None:
    """Linux's virtio_blk sends header, seg_max data buffers and status in
    one indirect table: as many entries as the queue has."""
    d = rng_driver()
    d.start()
    table = BUFFERS_AT + 0x10000
    for i in range(d.size):
        last = i == d.size - 1
        entry = (BUFFERS_AT + 0x100 * i, 4, WRITE | (0 if last else NEXT), i + 1)
        d.memory.write(table + 16 * i, struct.pack("<QIHH", *entry))
    d.descriptors(0, [(table, 16 * d.size, INDIRECT, 0)])
    d.offer(0, 0)
    assert d.used(0) == [(0, 4 * d.size)]
    d.memory.write(table + 16 * (d.size - 1), struct.pack("<QIHH", BUFFERS_AT, 4, WRITE | NEXT, 0))
    d.offer(0, 0)  # the same table made into a loop
    assert "longer than its table" in d.device.last_error


def test_an_indirect_chain_is_served() -> None:
    d = rng_driver()
    d.start()
    table = BUFFERS_AT + 0x10000
    d.memory.write(table, struct.pack("<QIHH", BUFFERS_AT, 8, WRITE | NEXT, 1))
    d.memory.write(table + 16, struct.pack("<QIHH", BUFFERS_AT + 0x100, 8, WRITE, 0))
    d.descriptors(0, [(table, 32, INDIRECT, 0)])
    d.offer(0, 0)
    assert d.used(0) == [(0, 16)]


def test_an_available_index_running_ahead_is_refused() -> None:
    d = rng_driver()
    d.start()
    _, avail, _ = d.areas(0)
    d.memory.write(avail + 2, struct.pack("<H", d.size + 1))
    d.set(Reg.QUEUE_NOTIFY, 0)
    assert "ran 17 ahead" in d.device.last_error


# -- virtio-blk ----------------------------------------------------------------------


def request(kind: int, sector: int = 0) -> bytes:
    return struct.pack("<IIQ", kind, 0, sector)


def status(d: Driver) -> int:
    """The status byte of the last request: the chain helper's last buffer."""
    assert d.used(0)[-1][1] >= 1
    return d.memory.read(d.next_buffer - 0x1000, 1)[0]


def test_blk_config_and_features(tmp_path: Path) -> None:
    d = blk_driver(disk(tmp_path, 64 * 1024, readonly=True))
    capacity, _, seg_max, *_, blk_size = struct.unpack("<QIIHBBI", d.device.read(0x100, 24))
    assert (capacity, seg_max, blk_size) == (128, blk.SEG_MAX, 512)
    d.set(Reg.DEVICE_FEATURES_SEL, 0)
    assert d.reg(Reg.DEVICE_FEATURES) & (blk.F_RO | blk.F_FLUSH | blk.F_BLK_SIZE)
    assert not d.reg(Reg.DEVICE_FEATURES) & blk.F_DISCARD  # nothing to punch read-only
    d.device.close()
    w = blk_driver(blk.DiskConfig(str(tmp_path / "disk.img")))
    both = blk.F_DISCARD | blk.F_WRITE_ZEROES
    assert w.reg(Reg.DEVICE_FEATURES) & both == both
    config = w.device.read(0x100, 60)
    assert len(config) == 60  # struct virtio_blk_config
    max_discard, max_seg, align = struct.unpack_from("<III", config, 36)
    assert (max_discard, max_seg, align) == (blk.RANGE_SECTORS_MAX, blk.RANGES_MAX, 1)


def test_blk_reads_writes_flushes_and_names_itself(tmp_path: Path) -> None:
    config = disk(tmp_path, serial="disk-7")
    d = blk_driver(config)
    d.start()
    d.chain(0, [request(blk.T_IN, 1)], [512, 1])
    assert d.used(0)[-1] == (0, 513)
    assert d.memory.read(BUFFERS_AT + 0x1000, 512) == bytes(range(256)) * 2
    assert status(d) == blk.S_OK
    d.chain(0, [request(blk.T_OUT, 2), b"x" * 1024], [1])
    assert status(d) == blk.S_OK
    assert Path(config.path).read_bytes()[1024:2048] == b"x" * 1024
    d.chain(0, [request(blk.T_FLUSH)], [1])
    assert status(d) == blk.S_OK
    d.chain(0, [request(blk.T_GET_ID)], [20, 1])
    assert d.memory.read(d.next_buffer - 0x2000, 20) == b"disk-7".ljust(20, b"\0")
    d.chain(0, [request(99)], [1])
    assert status(d) == blk.S_UNSUPP


@pytest.mark.parametrize(
    "kind, sector, data",
    [
        (blk.T_IN, 127, 1024),  # runs past the end
        (blk.T_IN, 2**63, 512),  # sector * 512 overflows nothing: Python ints
        (blk.T_IN, 0, 100),  # not whole sectors
    ],
)
def test_blk_requests_outside_the_disk_fail_alone(
    tmp_path: Path, kind: int, sector: int, data: int
) -> None:
    d = blk_driver(disk(tmp_path))
    d.start()
    d.chain(0, [request(kind, sector)], [data, 1])
    assert status(d) == blk.S_IOERR
    d.chain(0, [request(blk.T_IN, 0)], [512, 1])  # the device goes on
    assert status(d) == blk.S_OK


def test_a_read_only_disk_refuses_writes(tmp_path: Path) -> None:
    config = disk(tmp_path, readonly=True)
    before = Path(config.path).read_bytes()
    d = blk_driver(config)
    d.start()
    d.chain(0, [request(blk.T_OUT, 0), b"y" * 512], [1])
    assert status(d) == blk.S_IOERR
    assert Path(config.path).read_bytes() == before


def test_a_request_without_header_or_status_needs_a_reset(tmp_path: Path) -> None:
    d = blk_driver(disk(tmp_path))
    d.start()
    d.chain(0, [b"short"], [1])
    assert "without its header" in d.device.last_error


def test_disk_options_and_bad_files(tmp_path: Path) -> None:
    assert blk.DiskConfig.parse("a.img,readonly,serial=S1") == blk.DiskConfig("a.img", True, "S1")
    for text, words in [
        ("a.img,fast", "unknown option 'fast'"),
        ("a.img,serial=" + "x" * 21, "at most 20"),
        ("", "needs a file"),
    ]:
        with pytest.raises(UserError, match=words):
            blk.DiskConfig.parse(text)
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"x" * 1000)
    for path, words in [
        (str(odd), "not a multiple of 512"),
        (str(tmp_path / "none"), "No such file"),
        (str(tmp_path), "Is a directory|not a regular file"),
    ]:
        with pytest.raises(UserError, match=words):
            blk.open_disk(blk.DiskConfig(path))


@pytest.mark.parametrize(("kind", "flags"), [(blk.T_DISCARD, 0), (blk.T_WRITE_ZEROES, 0),
                                              (blk.T_WRITE_ZEROES, blk.RANGE_F_UNMAP)])  # fmt: skip
def test_discard_and_write_zeroes_leave_zeros_and_holes(
    tmp_path: Path, kind: int, flags: int
) -> None:
    config = disk(tmp_path, 1 << 20)
    d = blk_driver(config)
    d.start()
    ranges = struct.pack("<QII", 8, 512, flags) + struct.pack("<QII", 1024, 8, flags)
    d.chain(0, [request(kind), ranges], [1])
    assert status(d) == blk.S_OK
    data = Path(config.path).read_bytes()
    assert data[4096 : 4096 + 256 * 1024] == bytes(256 * 1024)
    assert data[1024 * 512 : 1032 * 512] == bytes(4096)
    assert data[:4096] == (bytes(range(256)) * 16)  # around them: as it was
    assert data[4096 + 256 * 1024 : 4096 + 256 * 1024 + 256] == bytes(range(256))
    if kind == blk.T_DISCARD or flags:
        assert os.stat(config.path).st_blocks * 512 <= (1 << 20) - 256 * 1024  # a hole


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (struct.pack("<QII", 2040, 16, 0), blk.S_IOERR),  # past the end
        (struct.pack("<QII", 0, 8, 1), blk.S_UNSUPP),  # discard with unmap
        (struct.pack("<QII", 0, 8, 2), blk.S_UNSUPP),  # an unknown flag
        (b"short", blk.S_UNSUPP),
        (b"", blk.S_UNSUPP),
    ],
)
def test_bad_discards_fail_and_change_nothing(
    tmp_path: Path, payload: bytes, expected: int
) -> None:
    config = disk(tmp_path, 1 << 20)
    before = Path(config.path).read_bytes()
    d = blk_driver(config)
    d.start()
    d.chain(0, [request(blk.T_DISCARD), payload] if payload else [request(blk.T_DISCARD)], [1])
    assert status(d) == expected
    assert Path(config.path).read_bytes() == before


def test_a_writable_disk_is_one_guests_alone(tmp_path: Path) -> None:
    config = disk(tmp_path)
    first = blk.Block(config)
    try:
        with pytest.raises(UserError, match="in use by another guest"):
            blk.Block(config)
        with pytest.raises(UserError, match="in use by another guest"):
            blk.Block(blk.DiskConfig(config.path, readonly=True))
    finally:
        first.close()
    readers = [blk.Block(blk.DiskConfig(config.path, readonly=True)) for _ in range(2)]
    with pytest.raises(UserError, match="locked"):
        blk.Block(config)
    for r in readers:
        r.close()
    blk.Block(config).close()  # free again once they are gone


# -- saved state -------------------------------------------------------------------


def test_transport_state_round_trip() -> None:
    d = rng_driver()
    d.start()
    d.chain(0, [], [8])
    saved = d.device.state()
    twin = VirtioMmio(Rng(), d.memory)
    twin.restore(saved)
    assert twin.state() == saved
    t = Driver(twin, d.memory)
    t.avail_idx[0] = d.avail_idx[0]
    t.chain(0, [], [8])  # goes on where the original was
    assert t.used(0)[-1] == (0, 8) and len(t.used(0)) == 2
    with pytest.raises(ValueError, match="malformed"):
        VirtioMmio(Rng(), d.memory).restore({"queues": "x"})


# -- a hostile driver ----------------------------------------------------------------

REGISTERS = [r.value for r in Reg] + [0x100, 0x104, 0x1FC]


class FakeLink:
    """A network card's host side holding a few frames."""

    up = True
    guest_words = ""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames

    def fileno(self) -> int:
        return -1

    def receive(self) -> bytes | None:
        return self.frames.pop() if self.frames else None

    def send(self, frame: bytes) -> None:
        pass

    def close(self) -> None:
        pass


DESCRIPTOR = st.tuples(
    st.one_of(st.integers(0, 2**64 - 1), st.integers(BUFFERS_AT, BUFFERS_AT + 0x8000)),
    st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 0x2000)),
    st.integers(0, 7),  # NEXT, WRITE, INDIRECT in every mix
    st.integers(0, 20),
)


@FUZZ
@given(
    kind=st.sampled_from(["rng", "blk", "net"]),
    descs=st.lists(DESCRIPTOR, max_size=20),
    heads=st.lists(st.integers(0, 24), max_size=20),
    indirect=st.binary(max_size=256),
    writes=st.lists(
        st.tuples(
            st.sampled_from(REGISTERS), st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 4])
        ),
        max_size=20,
    ),
)
def test_a_hostile_driver_never_breaks_the_device_model(
    tmp_path_factory: pytest.TempPathFactory,
    kind: str,
    descs: list[tuple[int, int, int, int]],
    heads: list[int],
    indirect: bytes,
    writes: list[tuple[int, int, int]],
) -> None:
    """Chains of random descriptors (loops, indirect tables of junk, buffers
    anywhere), then registers written in any order with any values and
    notifications at any time: the model raises nothing, and whatever it
    does, it does inside guest RAM (GuestMemory refuses anything else,
    which would raise here)."""
    if kind == "net":
        memory = ram()
        link = FakeLink([bytes(60)] * 3)
        d = Driver(VirtioMmio(net.Net(link, bytes.fromhex("525400123456")), memory), memory)
    elif kind == "rng":
        d = rng_driver()
    else:
        d = blk_driver(disk(tmp_path_factory.mktemp("d"), 4096))
    d.start()
    d.memory.write(BUFFERS_AT, indirect)  # where indirect tables may point
    d.descriptors(0, descs)
    for head in heads:
        d.offer(0, head)
    for offset, value, size in writes:
        d.device.write(offset, value.to_bytes(4, "little")[:size])
        d.device.read(offset, size)
        d.device.host_ready()  # frames from the host at any moment
    d.set(Reg.QUEUE_NOTIFY, 0)
    d.device.close()


def test_trace_and_stats_say_what_was_served(tmp_path: Path) -> None:
    d = blk_driver(disk(tmp_path))
    lines: list[str] = []
    d.device.trace = lines.append
    d.start(features=F_VERSION_1)  # no EVENT_IDX: an interrupt for every request
    d.chain(0, [request(blk.T_IN, 3)], [1024, 1])
    d.chain(0, [request(blk.T_OUT, 999)], [1])
    assert lines == ["read 1024 bytes at sector 3: ok", "write 0 bytes at sector 999: I/O error"]
    assert d.device.stats() == (
        "2 notifications, 2 interrupts, 2 requests (1 failed), 1024 bytes read, 0 written"
    )
    d.chain(0, [b"x"], [1])
    assert "needs a reset: a block request without" in d.device.stats()
    assert lines[-1].startswith("the driver broke a rule")
