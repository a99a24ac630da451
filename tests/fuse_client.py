"""A FUSE client for tests: builds requests as Linux's fuse module does and
reads the replies of :class:`~pyvmm.devices.fuse.server.FuseServer`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pyvmm.devices.fuse import protocol as p
from pyvmm.devices.fuse.server import FuseServer


class FuseError(Exception):
    def __init__(self, errno: int) -> None:
        super().__init__(os.strerror(errno))
        self.errno = errno


@dataclass
class Attr:
    ino: int
    size: int
    mode: int
    nlink: int
    uid: int
    gid: int


def request(opcode: int, nodeid: int, body: bytes, unique: int, uid: int = 0) -> bytes:
    header = p.IN_HEADER.pack(p.IN_HEADER.size + len(body), opcode, unique, nodeid, uid, 0, 1, 0, 0)
    return header + body


@dataclass
class Client:
    server: FuseServer
    unique: int = 0
    uid: int = 0
    sent: list[int] = field(default_factory=list)

    def call(self, opcode: int, nodeid: int, body: bytes = b"") -> bytes:
        self.unique += 1
        answer = self.server.serve(request(opcode, nodeid, body, self.unique, self.uid))
        assert answer is not None
        length, error, unique = p.OUT_HEADER.unpack_from(answer)
        assert unique == self.unique and length == len(answer)
        if error:
            raise FuseError(-error)
        return answer[p.OUT_HEADER.size :]

    def init(self) -> bytes:
        return self.call(p.INIT, 0, p.INIT_IN.pack(7, 31, 128 * 1024, 0) + bytes(48))

    @staticmethod
    def attr(raw: bytes) -> Attr:
        f = p.ATTR.unpack_from(raw)
        return Attr(ino=f[0], size=f[1], mode=f[9], nlink=f[10], uid=f[11], gid=f[12])

    def entry(self, raw: bytes) -> tuple[int, Attr]:
        return p.ENTRY_OUT.unpack_from(raw)[0], self.attr(raw[p.ENTRY_OUT.size :])

    def lookup(self, parent: int, name: bytes) -> tuple[int, Attr]:
        return self.entry(self.call(p.LOOKUP, parent, name + b"\0"))

    def getattr(self, node: int) -> Attr:
        return self.attr(self.call(p.GETATTR, node, p.GETATTR_IN.pack(0, 0, 0))[p.ATTR_OUT.size :])

    def create(
        self, parent: int, name: bytes, mode: int = 0o644, flags: int = os.O_RDWR
    ) -> tuple[int, int]:
        raw = self.call(
            p.CREATE, parent, p.CREATE_IN.pack(flags, 0o100000 | mode, 0o022, 0) + name + b"\0"
        )
        node, _ = self.entry(raw)
        fh = p.OPEN_OUT.unpack_from(raw, p.ENTRY_OUT.size + p.ATTR.size)[0]
        return node, fh

    def open(self, node: int, flags: int = os.O_RDONLY) -> int:
        return p.OPEN_OUT.unpack(self.call(p.OPEN, node, p.OPEN_IN.pack(flags, 0)))[0]

    def opendir(self, node: int) -> int:
        return p.OPEN_OUT.unpack(self.call(p.OPENDIR, node, p.OPEN_IN.pack(0, 0)))[0]

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return self.call(p.READ, 0, p.READ_IN.pack(fh, offset, size, 0, 0, 0, 0))

    def write(self, fh: int, offset: int, data: bytes) -> int:
        raw = self.call(p.WRITE, 0, p.WRITE_IN.pack(fh, offset, len(data), 0, 0, 0, 0) + data)
        return p.WRITE_OUT.unpack(raw)[0]

    def release(self, fh: int) -> None:
        self.call(p.RELEASE, 0, p.RELEASE_IN.pack(fh, 0, 0, 0))

    def readdir(self, node: int) -> list[bytes]:
        fh = self.opendir(node)
        names: list[bytes] = []
        offset = 0
        while True:
            raw = self.call(p.READDIR, node, p.READ_IN.pack(fh, offset, 4096, 0, 0, 0, 0))
            if not raw:
                break
            at = 0
            while at < len(raw):
                _, offset, namelen, _ = p.DIRENT.unpack_from(raw, at)
                start = at + p.DIRENT.size
                names.append(raw[start : start + namelen])
                at = start + namelen + (-(p.DIRENT.size + namelen) % 8)
        self.call(p.RELEASEDIR, node, p.RELEASE_IN.pack(fh, 0, 0, 0))
        return names

    def mkdir(self, parent: int, name: bytes, mode: int = 0o755) -> int:
        return self.entry(self.call(p.MKDIR, parent, p.MKDIR_IN.pack(mode, 0o022) + name + b"\0"))[
            0
        ]

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int = 0) -> int:
        body = p.MKNOD_IN.pack(mode, rdev, 0o022, 0) + name + b"\0"
        return self.entry(self.call(p.MKNOD, parent, body))[0]

    def symlink(self, parent: int, name: bytes, target: bytes) -> int:
        return self.entry(self.call(p.SYMLINK, parent, name + b"\0" + target + b"\0"))[0]

    def readlink(self, node: int) -> bytes:
        return self.call(p.READLINK, node)

    def link(self, node: int, parent: int, name: bytes) -> tuple[int, Attr]:
        return self.entry(self.call(p.LINK, parent, p.LINK_IN.pack(node) + name + b"\0"))

    def rename(self, parent: int, old: bytes, new_parent: int, new: bytes) -> None:
        self.call(p.RENAME, parent, p.RENAME_IN.pack(new_parent) + old + b"\0" + new + b"\0")

    def unlink(self, parent: int, name: bytes) -> None:
        self.call(p.UNLINK, parent, name + b"\0")

    def rmdir(self, parent: int, name: bytes) -> None:
        self.call(p.RMDIR, parent, name + b"\0")

    def setattr(self, node: int, valid: int, *, mode: int = 0, size: int = 0, uid: int = 0) -> Attr:
        body = p.SETATTR_IN.pack(valid, 0, 0, size, 0, 0, 0, 0, 0, 0, 0, mode, 0, uid, 0, 0)
        return self.attr(self.call(p.SETATTR, node, body)[p.ATTR_OUT.size :])

    def fsync(self, fh: int) -> None:
        self.call(p.FSYNC, 0, p.FSYNC_IN.pack(fh, 0, 0))

    def forget(self, node: int, count: int) -> None:
        self.unique += 1
        assert (
            self.server.serve(request(p.FORGET, node, p.FORGET_IN.pack(count), self.unique)) is None
        )
