"""virtio-fs over the virtio-mmio transport: the configuration space names
the share, FUSE requests travel in chains, FORGETs on the high-priority
queue get no reply; and ``--share`` refuses what cannot be shared."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pyvmm.devices.fuse import protocol as p
from pyvmm.devices.virtio.fs import Fs, ShareConfig
from pyvmm.devices.virtio.mmio import CONFIG, Reg, VirtioMmio
from pyvmm.errors import UserError
from tests.fuse_client import request
from tests.virtio_driver import BUFFERS_AT, Driver, ram

HIPRIO, REQUESTS = 0, 1


def driver(share: Path, readonly: bool = False) -> Driver:
    memory = ram()
    config = ShareConfig(str(share), "/mnt/share", readonly, "pyvmm0")
    return Driver(VirtioMmio(Fs(config), memory), memory)


def test_the_config_space_holds_the_tag_and_one_request_queue(tmp_path: Path) -> None:
    d = driver(tmp_path)
    assert d.reg(Reg.DEVICE_ID) == 26  # virtio 1.2, 5.11
    tag, queues = struct.unpack("<36sI", d.device.read(CONFIG, 40))
    assert tag.rstrip(b"\0") == b"pyvmm0" and queues == 1


def test_requests_and_replies_travel_in_chains(tmp_path: Path) -> None:
    (tmp_path / "hello").write_text("hi")
    d = driver(tmp_path)
    d.start()
    init = request(p.INIT, 0, p.INIT_IN.pack(7, 31, 65536, 0) + bytes(48), 1)
    head = d.chain(REQUESTS, [init], [p.OUT_HEADER.size + p.INIT_OUT.size])
    assert d.used(REQUESTS) == [(head, 16 + 64)]
    reply_at = BUFFERS_AT + 0x1000  # the writable buffer follows the request's page
    length, error, unique = p.OUT_HEADER.unpack(d.memory.read(reply_at, 16))
    assert (length, error, unique) == (80, 0, 1)
    # A reply that does not fit: the request fails with EIO, in what room there is.
    lookup = request(p.LOOKUP, p.ROOT_ID, b"hello\0", 2)
    d.chain(REQUESTS, [lookup], [16])
    _, used = d.used(REQUESTS)[-1]
    length, error, unique = p.OUT_HEADER.unpack(d.memory.read(d.next_buffer - 0x1000, 16))
    assert (used, error, unique) == (16, -5, 2)
    # FORGET on the high-priority queue: consumed, no reply.
    d.chain(HIPRIO, [request(p.FORGET, 2, p.FORGET_IN.pack(1), 3)], [])
    assert d.used(HIPRIO) == [(0, 0)]


def test_share_options(tmp_path: Path) -> None:
    s = ShareConfig.parse(f"{tmp_path}:/mnt/x,ro", 2)
    assert (s.host, s.guest, s.readonly, s.tag) == (str(tmp_path), "/mnt/x", True, "pyvmm2")
    assert s.word() == "pyvmm.share=pyvmm2:/mnt/x:ro"
    assert ShareConfig.parse(str(tmp_path)).guest == str(tmp_path)
    (tmp_path / "file").touch()
    for bad, fragment in [
        (str(tmp_path / "missing"), "no such directory"),
        (str(tmp_path / "file"), "not a directory"),
        (f"{tmp_path}:relative", "absolute"),
        (f"{tmp_path}:/with space", "absolute"),
        (f"{tmp_path},rw", "unknown option"),
        ("", "needs a directory"),
    ]:
        with pytest.raises(UserError, match=fragment):
            ShareConfig.parse(bad)
