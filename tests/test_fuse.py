"""The FUSE server behind virtio-fs, without a guest: file operations
behave as on the host, and a hostile client cannot reach outside the share."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.devices.fuse import protocol as p
from pyvmm.devices.fuse.server import FuseServer
from tests.fuse_client import Client, FuseError, request

ROOT = p.ROOT_ID


@pytest.fixture
def share(tmp_path: Path) -> Path:
    (tmp_path / "share").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("host secret\n")
    return tmp_path / "share"


@pytest.fixture
def client(share: Path) -> Iterator[Client]:
    c = Client(FuseServer(str(share)))
    c.init()
    yield c
    c.server.close()


def refused(errno_: int) -> pytest.RaisesContext[FuseError]:
    return pytest.raises(FuseError, match=os.strerror(errno_))


def test_init_answers_with_the_version_and_the_write_size(share: Path) -> None:
    c = Client(FuseServer(str(share)))
    with refused(errno.EIO):  # nothing before INIT
        c.lookup(ROOT, b"x")
    major, minor, _, _, _, _, max_write, *_ = p.INIT_OUT.unpack(c.init())
    assert (major, minor, max_write) == (7, 31, 128 * 1024)


def test_create_write_read_and_the_host_sees_it(client: Client, share: Path) -> None:
    node, fh = client.create(ROOT, b"file", 0o640)
    assert client.write(fh, 0, b"hello from the guest\n") == 21
    client.fsync(fh)
    client.release(fh)
    assert (share / "file").read_bytes() == b"hello from the guest\n"
    assert stat.S_IMODE((share / "file").stat().st_mode) == 0o640 & ~0o022
    (share / "file").write_bytes(b"changed on the host")
    fh = client.open(node)
    assert client.read(fh, 8, 100) == b"on the host"
    assert client.getattr(node).size == 19


def test_large_files_sparse_past_4_gib(client: Client, share: Path) -> None:
    _, fh = client.create(ROOT, b"big")
    far = 5 << 30
    assert client.write(fh, far, b"end") == 3
    assert client.read(fh, far - 2, 10) == b"\0\0end"
    assert (share / "big").stat().st_size == far + 3


def test_directories_with_thousands_of_entries(client: Client, share: Path) -> None:
    d = share / "many"
    d.mkdir()
    for i in range(3000):
        (d / f"entry-{i:05}").touch()
    node, _ = client.lookup(ROOT, b"many")
    names = client.readdir(node)
    assert names[:2] == [b".", b".."]
    assert sorted(names[2:]) == sorted(os.fsencode(n) for n in os.listdir(d))


def test_mkdir_rename_unlink_rmdir(client: Client, share: Path) -> None:
    d = client.mkdir(ROOT, b"d")
    _, fh = client.create(d, b"a")
    client.release(fh)
    client.rename(d, b"a", ROOT, b"b")
    assert (share / "b").exists() and not (share / "d" / "a").exists()
    with refused(errno.ENOTEMPTY):
        (share / "d" / "x").touch()
        client.rmdir(ROOT, b"d")
    client.unlink(d, b"x")
    client.rmdir(ROOT, b"d")
    client.unlink(ROOT, b"b")
    assert os.listdir(share) == []


def test_symlinks_are_kept_and_read_not_followed(client: Client, share: Path) -> None:
    link = client.symlink(ROOT, b"passwd", b"/etc/passwd")
    assert os.readlink(share / "passwd") == "/etc/passwd"
    assert client.readlink(link) == b"/etc/passwd"
    assert stat.S_ISLNK(client.getattr(link).mode)
    with refused(errno.ELOOP):  # opening it on the host would follow it
        client.open(link)


def test_hard_links_and_permissions(client: Client, share: Path) -> None:
    node, fh = client.create(ROOT, b"one")
    client.release(fh)
    _, attr = client.link(node, ROOT, b"two")
    assert attr.nlink == 2 and os.path.samefile(share / "one", share / "two")
    attr = client.setattr(node, p.FATTR_MODE, mode=0o600)
    assert stat.S_IMODE(attr.mode) == 0o600 == stat.S_IMODE((share / "one").stat().st_mode)
    attr = client.setattr(node, p.FATTR_SIZE, size=10)
    assert (share / "two").read_bytes() == bytes(10)
    host = (share / "one").stat()
    assert (attr.uid, attr.gid) == (host.st_uid, host.st_gid)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files away needs root")
def test_a_file_the_guest_creates_belongs_to_its_caller(client: Client, share: Path) -> None:
    client.uid = 1234
    client.create(ROOT, b"mine")
    assert (share / "mine").stat().st_uid == 1234


# -- escapes -------------------------------------------------------------


@pytest.mark.parametrize("name", [b"..", b".", b"../outside", b"/etc", b"a/b", b"", b"x" * 256])
def test_names_that_are_not_one_step_down_are_refused(client: Client, name: bytes) -> None:
    with pytest.raises(FuseError) as e:
        client.lookup(ROOT, name)
    assert e.value.errno in (errno.EINVAL, errno.ENAMETOOLONG)
    with pytest.raises(FuseError):
        client.create(ROOT, name)


def test_symlinks_out_of_the_share_lead_nowhere(client: Client, share: Path) -> None:
    outside = share.parent / "outside"
    (share / "abs").symlink_to(outside)
    (share / "rel").symlink_to("../outside")
    (share / "file").symlink_to(outside / "secret")
    for name in (b"abs", b"rel"):
        node, attr = client.lookup(ROOT, name)
        assert stat.S_ISLNK(attr.mode)
        with refused(errno.ENOTDIR):  # a symlink node is no directory to look in
            client.lookup(node, b"secret")
        with refused(errno.ENOTDIR):
            client.opendir(node)
        with pytest.raises(FuseError):
            client.create(node, b"planted")
    node, _ = client.lookup(ROOT, b"file")
    with refused(errno.ELOOP):
        client.open(node)
    with refused(errno.EPERM):  # a hard link to a symlink could be followed later
        client.link(node, ROOT, b"hard")
    with refused(errno.EPERM):
        client.setattr(node, p.FATTR_SIZE, size=0)
    assert (outside / "secret").read_text() == "host secret\n"
    assert sorted(os.listdir(outside)) == ["secret"]


def test_creating_over_a_symlink_does_not_follow_it(client: Client, share: Path) -> None:
    outside = share.parent / "outside"
    (share / "trap").symlink_to(outside / "planted")
    with refused(errno.ELOOP):
        client.create(ROOT, b"trap", flags=os.O_RDWR | os.O_TRUNC)
    assert not (outside / "planted").exists()


def test_device_nodes_and_fifos(client: Client, share: Path) -> None:
    with refused(errno.EPERM):
        client.mknod(ROOT, b"mem", stat.S_IFCHR | 0o666, os.makedev(1, 1))
    fifo = client.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o644)
    assert stat.S_ISFIFO((share / "fifo").stat().st_mode)
    with refused(errno.EACCES):  # would block the server
        client.open(fifo)
    with refused(errno.EACCES):
        client.create(ROOT, b"fifo")
    if os.geteuid() == 0:
        os.mknod(share / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        node, _ = client.lookup(ROOT, b"null")
        with refused(errno.EACCES):
            client.open(node, os.O_RDWR)


def test_a_read_only_share_refuses_every_change(share: Path) -> None:
    (share / "file").write_text("keep\n")
    (share / "dir").mkdir()
    c = Client(FuseServer(str(share), readonly=True))
    c.init()
    node, _ = c.lookup(ROOT, b"file")
    with refused(errno.EROFS):
        c.open(node, os.O_RDWR)
    with refused(errno.EROFS):
        c.open(node, os.O_WRONLY | os.O_TRUNC)
    fh = c.open(node)
    assert c.read(fh, 0, 10) == b"keep\n"
    with refused(errno.EROFS):
        c.write(fh, 0, b"x")
    attempts = [
        lambda: c.create(ROOT, b"new"), lambda: c.mkdir(ROOT, b"new"),
        lambda: c.unlink(ROOT, b"file"), lambda: c.rmdir(ROOT, b"dir"),
        lambda: c.rename(ROOT, b"file", ROOT, b"moved"), lambda: c.symlink(ROOT, b"l", b"x"),
        lambda: c.link(node, ROOT, b"hard"), lambda: c.setattr(node, p.FATTR_SIZE, size=0),
        lambda: c.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o644),
    ]  # fmt: skip
    for attempt in attempts:
        with refused(errno.EROFS):
            attempt()
    assert sorted(os.listdir(share)) == ["dir", "file"]
    assert (share / "file").read_text() == "keep\n"


def test_forgotten_nodes_release_their_descriptors(client: Client, share: Path) -> None:
    (share / "f").touch()
    before = len(os.listdir("/proc/self/fd"))
    node, _ = client.lookup(ROOT, b"f")
    client.lookup(ROOT, b"f")
    assert len(os.listdir("/proc/self/fd")) == before + 1  # one node, two references
    client.forget(node, 2)
    assert len(os.listdir("/proc/self/fd")) == before
    with refused(errno.ESTALE):
        client.getattr(node)


def test_state_restores_nodes_and_handles_by_path(client: Client, share: Path) -> None:
    d = client.mkdir(ROOT, b"d")
    node, fh = client.create(d, b"f")
    client.write(fh, 0, b"before")
    saved = client.server.state()
    (share / "d" / "f").write_bytes(b"changed on the host")
    twin = Client(FuseServer(str(share)), unique=client.unique)
    twin.server.restore(saved)
    assert twin.getattr(node).size == 19
    assert twin.read(fh, 0, 7) == b"changed"
    with pytest.raises(ValueError):
        FuseServer(str(share)).restore({"nodes": "nonsense"})


# -- fuzzing -----------------------------------------------------------------

OPCODES = sorted(p.OPCODE_NAMES)
NAMES = st.sampled_from([b"..", b".", b"a", b"d", b"l", b"/etc", b"x/y", b"", b"f\0g"])


def body_for(data: st.DataObject) -> bytes:
    kind = data.draw(st.sampled_from(["random", "names", "struct"]))
    if kind == "random":
        return data.draw(st.binary(max_size=200))
    if kind == "names":
        return b"".join(n + b"\0" for n in data.draw(st.lists(NAMES, max_size=3)))
    fixed = data.draw(st.binary(min_size=8, max_size=96))
    return fixed + b"".join(n + b"\0" for n in data.draw(st.lists(NAMES, max_size=2)))


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_requests_get_answers_and_stay_inside(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Random requests after a few legitimate ones: the server always
    answers (or, for FORGET, does not) and nothing outside the share
    changes."""
    base = tmp_path_factory.mktemp("fuzz")
    share, outside = base / "share", base / "outside"
    share.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("s")
    (share / "d").mkdir()
    (share / "a").write_text("a")
    (share / "l").symlink_to(outside)
    server = FuseServer(str(share), readonly=data.draw(st.booleans()))
    c = Client(server)
    c.init()
    for name in (b"a", b"d", b"l"):
        c.lookup(ROOT, name)
    try:
        for unique in range(data.draw(st.integers(1, 12))):
            opcode = data.draw(st.sampled_from(OPCODES) | st.integers(0, 60))
            nodeid = data.draw(st.integers(0, 6) | st.integers(0, 1 << 64 - 1))
            raw = request(opcode, nodeid, body_for(data), unique + 100)
            if data.draw(st.booleans()):
                raw = raw[: data.draw(st.integers(0, len(raw)))]
            answer = server.serve(raw)
            if answer is not None:
                length, error, echoed = p.OUT_HEADER.unpack_from(answer)
                assert length == len(answer) and echoed == unique + 100 and error <= 0
    finally:
        server.close()
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_text() == "s"


def test_a_deep_or_looping_saved_tree_restores_without_recursion(share: Path) -> None:
    deep = share
    for _ in range(50):
        deep = deep / "d"
    deep.mkdir(parents=True)
    nodes = [[2 + i, 1 + i if i else 1, "d", 1] for i in range(50)]
    nodes += [[100, 101, "x", 1], [101, 100, "y", 1]]  # a loop leads nowhere
    server = FuseServer(str(share))
    server.restore({"nodes": nodes, "handles": [], "next_node": 5000, "next_handle": 1})
    assert 51 in server.nodes.nodes and 100 not in server.nodes.nodes
    server.close()


def test_a_reset_releases_every_node_and_handle(client: Client, share: Path) -> None:
    (share / "f").touch()
    before = len(os.listdir("/proc/self/fd"))
    node, _ = client.lookup(ROOT, b"f")
    client.open(node)
    assert len(os.listdir("/proc/self/fd")) == before + 2
    client.server.reset()
    assert len(os.listdir("/proc/self/fd")) == before
    with refused(errno.EIO):  # INIT first, again
        client.lookup(ROOT, b"f")
