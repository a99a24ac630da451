"""The FUSE operations on a host directory: one request in, one reply out.

:meth:`FuseServer.serve` takes a request's bytes and returns the reply's
(None for FORGET, which has none). Nothing a guest sends can make it
raise: a malformed request is answered EINVAL, a host error with its errno,
anything unexpected with EIO (and counted). Names and nodes are checked by
:mod:`.nodes`; a read-only share answers every change with EROFS.

Ownership is the host's: the guest sees each file's host owner and mode.
When pyvmm runs as root, a file the guest creates is given to the guest
caller's user and group, as a local file system would; otherwise it
belongs to pyvmm's user, the only one it can belong to.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pyvmm.devices.fuse import protocol as p
from pyvmm.devices.fuse.nodes import WRITE_FLAGS, Handle, Node, Nodes, check_name, proc_path

#: How long the guest may cache names and attributes (seconds): short, so
#: files changed on the host show up quickly, as virtiofsd's cache=auto.
CACHE_SECONDS = 1
#: Largest READ or WRITE (FUSE's default of 32 pages; Linux 6.1's
#: virtio-fs asks for no more).
MAX_WRITE = 32 * 4096
#: Operations that change the share.
CHANGING = frozenset(
    {p.SETATTR, p.SYMLINK, p.MKNOD, p.MKDIR, p.UNLINK, p.RMDIR, p.RENAME, p.RENAME2,
     p.LINK, p.CREATE, p.WRITE, p.FALLOCATE, p.SETXATTR, p.REMOVEXATTR}
)  # fmt: skip
#: Whether pyvmm can give a created file to the guest's caller.
AS_ROOT = os.geteuid() == 0

Op = Callable[[p.Request], bytes]


def raise_open_files_limit() -> None:
    """Every node the guest looks up holds a descriptor until it is
    forgotten; a walk over a large tree needs many."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class FuseServer:
    """Serves one host directory (``root``), read-only if asked."""

    def __init__(self, root: str, *, readonly: bool = False) -> None:
        self.readonly = readonly
        self.nodes = Nodes(root)
        self.initialized = False
        #: Requests served, by opcode name; errors returned; bytes moved.
        self.counts: Counter[str] = Counter()
        self.errors = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self._ops: dict[int, Op] = {
            p.INIT: self._init, p.LOOKUP: self._lookup, p.GETATTR: self._getattr,
            p.SETATTR: self._setattr, p.READLINK: self._readlink, p.SYMLINK: self._symlink,
            p.MKNOD: self._mknod, p.MKDIR: self._mkdir, p.UNLINK: self._unlink,
            p.RMDIR: self._rmdir, p.RENAME: self._rename, p.LINK: self._link,
            p.OPEN: self._open, p.READ: self._read, p.WRITE: self._write,
            p.STATFS: self._statfs, p.RELEASE: self._release, p.RELEASEDIR: self._release,
            p.FSYNC: self._fsync, p.FSYNCDIR: self._fsync, p.FLUSH: self._nothing,
            p.OPENDIR: self._opendir, p.READDIR: self._readdir, p.CREATE: self._create,
            p.FALLOCATE: self._fallocate, p.LSEEK: self._lseek, p.DESTROY: self._nothing,
            p.SYNCFS: self._nothing,
        }  # fmt: skip

    def serve(self, data: bytes) -> bytes | None:
        try:
            request = p.Request.parse(data)
        except p.BadRequest:
            self.errors += 1
            return None  # no unique to answer to
        self.counts[p.OPCODE_NAMES.get(request.opcode, str(request.opcode))] += 1
        if request.opcode in (p.FORGET, p.BATCH_FORGET, p.INTERRUPT):
            self._forget(request)
            return None
        op = self._ops.get(request.opcode)
        try:
            if op is None:
                raise OSError(errno.ENOSYS, "not implemented")  # xattrs, locks, ioctl, ...
            if not self.initialized and request.opcode != p.INIT:
                raise OSError(errno.EIO, "INIT first")
            if self.readonly and request.opcode in CHANGING:
                raise OSError(errno.EROFS, "read-only share")
            return op(request)
        except p.BadRequest:
            error = errno.EINVAL
        except OSError as e:
            error = e.errno or errno.EIO
        except (ValueError, OverflowError):  # e.g. an offset no host call takes
            error = errno.EINVAL
        self.errors += 1
        return p.reply(request.unique, error)

    def reset(self) -> None:
        """The driver starts over (a device reset): nothing it held stays."""
        root = self.nodes.root
        self.nodes.close()
        self.nodes = Nodes(root)
        self.initialized = False

    def close(self) -> None:
        self.nodes.close()

    def state(self) -> dict[str, Any]:
        return {"initialized": int(self.initialized), **self.nodes.state()}

    def restore(self, state: dict[str, Any]) -> None:
        self.initialized = bool(state.get("initialized", 0))
        self.nodes.restore(state)

    # -- helpers -----------------------------------------------------------

    def _entry(self, request: p.Request, node: Node, st: os.stat_result) -> bytes:
        return p.reply(request.unique, 0, _entry_out(node, st))

    def _attr(self, request: p.Request, st: os.stat_result) -> bytes:
        return p.reply(request.unique, 0, p.ATTR_OUT.pack(CACHE_SECONDS, 0, 0) + p.attr(st))

    def _created(
        self, request: p.Request, parent: Node, name: bytes
    ) -> tuple[Node, os.stat_result]:
        """Look up what was just made and, as root, give it to the caller."""
        node, st = self.nodes.lookup(parent, name)
        if AS_ROOT and (st.st_uid, st.st_gid) != (request.uid, request.gid):
            os.chown(
                check_name(name), request.uid, request.gid, dir_fd=parent.fd, follow_symlinks=False
            )
            st = self.nodes.stat(node)
        return node, st

    # -- operations --------------------------------------------------------

    def _init(self, request: p.Request) -> bytes:
        major, minor, max_readahead, _flags = p.unpack(p.INIT_IN, request.body)
        if major != p.MAJOR:
            raise OSError(errno.EPROTO, f"FUSE {major}.{minor}")
        self.initialized = True
        flags = p.INIT_ASYNC_READ | p.INIT_BIG_WRITES | p.INIT_PARALLEL_DIROPS
        out = p.INIT_OUT.pack(
            p.MAJOR, min(minor, p.MINOR), max_readahead, flags, 16, 12, MAX_WRITE, 1, 0, 0, 0
        )
        return p.reply(request.unique, 0, out)

    def _forget(self, request: p.Request) -> None:
        try:
            if request.opcode == p.FORGET:
                (count,) = p.unpack(p.FORGET_IN, request.body)
                self.nodes.forget(request.nodeid, count)
            elif request.opcode == p.BATCH_FORGET:
                (n, _) = p.unpack(p.BATCH_FORGET_IN, request.body)
                body = request.body[p.BATCH_FORGET_IN.size :]
                for i in range(min(n, len(body) // p.FORGET_ONE.size)):
                    self.nodes.forget(*p.FORGET_ONE.unpack_from(body, i * p.FORGET_ONE.size))
        except p.BadRequest:
            self.errors += 1

    def _lookup(self, request: p.Request) -> bytes:
        (name,) = p.names(request.body, 0, 1)
        node, st = self.nodes.lookup(self.nodes.get(request.nodeid), name)
        return self._entry(request, node, st)

    def _getattr(self, request: p.Request) -> bytes:
        return self._attr(request, self.nodes.stat(self.nodes.get(request.nodeid)))

    def _setattr(self, request: p.Request) -> bytes:
        f = p.unpack(p.SETATTR_IN, request.body)
        valid, fh, size, atime, mtime, atime_ns, mtime_ns, mode, uid, gid = (
            f[0], f[2], f[3], f[5], f[6], f[8], f[9], f[11], f[13], f[14]
        )  # fmt: skip
        node = self.nodes.get(request.nodeid)
        st = self.nodes.stat(node)
        if stat.S_ISLNK(st.st_mode):  # a symlink's own attributes stay the host's
            raise OSError(errno.EPERM, "symlink attributes")
        path = proc_path(node.fd)
        if valid & p.FATTR_MODE:
            os.chmod(path, mode & 0o7777)
        if valid & (p.FATTR_UID | p.FATTR_GID):
            os.chown(path, uid if valid & p.FATTR_UID else -1, gid if valid & p.FATTR_GID else -1)
        if valid & p.FATTR_SIZE:
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "size of a non-file")
            if valid & p.FATTR_FH and fh in self.nodes.handles:
                os.ftruncate(self.nodes.handle(fh).fd, size)
            else:
                os.truncate(path, size)
        if valid & (p.FATTR_ATIME | p.FATTR_MTIME | p.FATTR_ATIME_NOW | p.FATTR_MTIME_NOW):
            now = time.time_ns()
            a = now if valid & p.FATTR_ATIME_NOW else atime * 1_000_000_000 + atime_ns
            m = now if valid & p.FATTR_MTIME_NOW else mtime * 1_000_000_000 + mtime_ns
            if not valid & (p.FATTR_ATIME | p.FATTR_ATIME_NOW):
                a = st.st_atime_ns
            if not valid & (p.FATTR_MTIME | p.FATTR_MTIME_NOW):
                m = st.st_mtime_ns
            os.utime(path, ns=(a, m))
        return self._attr(request, self.nodes.stat(node))

    def _readlink(self, request: p.Request) -> bytes:
        node = self.nodes.get(request.nodeid)
        target = os.readlink(b"", dir_fd=node.fd)  # readlinkat on the O_PATH descriptor
        return p.reply(request.unique, 0, target)

    def _symlink(self, request: p.Request) -> bytes:
        name, target = p.names(request.body, 0, 2)
        parent = self.nodes.get(request.nodeid)
        os.symlink(target, check_name(name), dir_fd=parent.fd)
        return self._entry(request, *self._created(request, parent, name))

    def _mknod(self, request: p.Request) -> bytes:
        mode, _rdev, umask, _ = p.unpack(p.MKNOD_IN, request.body)
        (name,) = p.names(request.body, p.MKNOD_IN.size, 1)
        kind = stat.S_IFMT(mode)
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK):
            raise OSError(errno.EPERM, "no device nodes in a share")
        parent = self.nodes.get(request.nodeid)
        os.mknod(check_name(name), kind | (mode & 0o7777 & ~umask), dir_fd=parent.fd)
        return self._entry(request, *self._created(request, parent, name))

    def _mkdir(self, request: p.Request) -> bytes:
        mode, umask = p.unpack(p.MKDIR_IN, request.body)
        (name,) = p.names(request.body, p.MKDIR_IN.size, 1)
        parent = self.nodes.get(request.nodeid)
        os.mkdir(check_name(name), mode & 0o7777 & ~umask, dir_fd=parent.fd)
        return self._entry(request, *self._created(request, parent, name))

    def _unlink(self, request: p.Request) -> bytes:
        (name,) = p.names(request.body, 0, 1)
        os.unlink(check_name(name), dir_fd=self.nodes.get(request.nodeid).fd)
        return p.reply(request.unique)

    def _rmdir(self, request: p.Request) -> bytes:
        (name,) = p.names(request.body, 0, 1)
        os.rmdir(check_name(name), dir_fd=self.nodes.get(request.nodeid).fd)
        return p.reply(request.unique)

    def _rename(self, request: p.Request) -> bytes:
        (new_dir,) = p.unpack(p.RENAME_IN, request.body)
        old, new = p.names(request.body, p.RENAME_IN.size, 2)
        parent, new_parent = self.nodes.get(request.nodeid), self.nodes.get(new_dir)
        old_name, new_name = check_name(old), check_name(new)
        os.rename(old_name, new_name, src_dir_fd=parent.fd, dst_dir_fd=new_parent.fd)
        self.nodes.renamed(parent, old_name, new_parent, new_name)
        return p.reply(request.unique)

    def _link(self, request: p.Request) -> bytes:
        (old_id,) = p.unpack(p.LINK_IN, request.body)
        (name,) = p.names(request.body, p.LINK_IN.size, 1)
        node, parent = self.nodes.get(old_id), self.nodes.get(request.nodeid)
        mode = self.nodes.stat(node).st_mode
        if stat.S_ISLNK(mode) or stat.S_ISDIR(mode):
            raise OSError(errno.EPERM, "only files are hard-linked")
        # linkat through the magic link: the node's own inode, never a path.
        os.link(proc_path(node.fd), check_name(name), dst_dir_fd=parent.fd, follow_symlinks=True)
        node, st = self.nodes.lookup(parent, name)
        return self._entry(request, node, st)

    def _open(self, request: p.Request) -> bytes:
        flags, _ = p.unpack(p.OPEN_IN, request.body)
        if self.readonly and flags & WRITE_FLAGS:
            raise OSError(errno.EROFS, "read-only share")
        handle = self.nodes.open(self.nodes.get(request.nodeid), flags, directory=False)
        return p.reply(request.unique, 0, p.OPEN_OUT.pack(handle.fh, 0, 0))

    def _opendir(self, request: p.Request) -> bytes:
        handle = self.nodes.open(self.nodes.get(request.nodeid), 0, directory=True)
        return p.reply(request.unique, 0, p.OPEN_OUT.pack(handle.fh, 0, 0))

    def _create(self, request: p.Request) -> bytes:
        flags, mode, umask, _ = p.unpack(p.CREATE_IN, request.body)
        (name,) = p.names(request.body, p.CREATE_IN.size, 1)
        parent = self.nodes.get(request.nodeid)
        # O_NONBLOCK: an existing FIFO of that name must not stall the server;
        # O_NOFOLLOW: nor may a symlink of that name lead anywhere.
        open_flags = (flags & ~(os.O_NOCTTY | os.O_NOFOLLOW)) | os.O_CREAT | os.O_NOFOLLOW
        fd = os.open(
            check_name(name),
            open_flags | os.O_NONBLOCK | os.O_CLOEXEC,
            mode & 0o7777 & ~umask,
            dir_fd=parent.fd,
        )
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EACCES, "only regular files are opened on the host")
            os.set_blocking(fd, not flags & os.O_NONBLOCK)
            node, st = self._created(request, parent, name)
        except OSError:
            os.close(fd)
            raise
        handle = self.nodes.keep(node, fd, flags, directory=False)
        return p.reply(request.unique, 0, _entry_out(node, st) + p.OPEN_OUT.pack(handle.fh, 0, 0))

    def _read(self, request: p.Request) -> bytes:
        fh, offset, size, *_ = p.unpack(p.READ_IN, request.body)
        data = os.pread(self._file(fh).fd, min(size, MAX_WRITE), offset)
        self.bytes_read += len(data)
        return p.reply(request.unique, 0, data)

    def _write(self, request: p.Request) -> bytes:
        fh, offset, size, *_ = p.unpack(p.WRITE_IN, request.body)
        data = request.body[p.WRITE_IN.size : p.WRITE_IN.size + size]
        if len(data) != size:
            raise p.BadRequest("WRITE shorter than it says")
        written = os.pwrite(self._file(fh).fd, data, offset)
        self.bytes_written += written
        return p.reply(request.unique, 0, p.WRITE_OUT.pack(written, 0))

    def _file(self, fh: int) -> Handle:
        handle = self.nodes.handle(fh)
        if handle.is_dir:
            raise OSError(errno.EISDIR, "a directory handle")
        return handle

    def _statfs(self, request: p.Request) -> bytes:
        s = os.statvfs(self.nodes.get(request.nodeid).fd)
        out = p.STATFS_OUT.pack(
            s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
            s.f_bsize, s.f_namemax, s.f_frsize, 0,
        )  # fmt: skip
        return p.reply(request.unique, 0, out)

    def _release(self, request: p.Request) -> bytes:
        fh, *_ = p.unpack(p.RELEASE_IN, request.body)
        self.nodes.release(fh)
        return p.reply(request.unique)

    def _fsync(self, request: p.Request) -> bytes:
        fh, flags, _ = p.unpack(p.FSYNC_IN, request.body)
        fd = self.nodes.handle(fh).fd
        os.fdatasync(fd) if flags & 1 else os.fsync(fd)  # FUSE_FSYNC_FDATASYNC
        return p.reply(request.unique)

    def _nothing(self, request: p.Request) -> bytes:
        return p.reply(request.unique)

    def _readdir(self, request: p.Request) -> bytes:
        fh, offset, size, *_ = p.unpack(p.READ_IN, request.body)
        handle = self.nodes.handle(fh)
        if not handle.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory handle")
        if handle.entries is None or offset == 0:
            handle.entries = _entries(handle.fd)
        out = bytearray()
        for i in range(offset, len(handle.entries)):
            name, ino, mode = handle.entries[i]
            entry = p.dirent(ino, i + 1, name, mode)
            if len(out) + len(entry) > size:
                break
            out += entry
        return p.reply(request.unique, 0, bytes(out))

    def _fallocate(self, request: p.Request) -> bytes:
        fh, offset, length, mode, _ = p.unpack(p.FALLOCATE_IN, request.body)
        if mode:
            raise OSError(errno.EOPNOTSUPP, "only plain fallocate")
        os.posix_fallocate(self._file(fh).fd, offset, length)
        return p.reply(request.unique)

    def _lseek(self, request: p.Request) -> bytes:
        fh, offset, whence, _ = p.unpack(p.LSEEK_IN, request.body)
        if whence not in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "only SEEK_DATA and SEEK_HOLE")
        return p.reply(
            request.unique, 0, p.LSEEK_OUT.pack(os.lseek(self._file(fh).fd, offset, whence))
        )


def _entry_out(node: Node, st: os.stat_result) -> bytes:
    """``struct fuse_entry_out``: the node, cached as long as its attributes."""
    return p.ENTRY_OUT.pack(node.nodeid, 0, CACHE_SECONDS, CACHE_SECONDS, 0, 0) + p.attr(st)


def _entries(fd: int) -> list[tuple[bytes, int, int]]:
    """A directory's entries with ``.`` and ``..`` first: (name, ino, mode)."""
    st = os.fstat(fd)
    out = [(b".", st.st_ino, stat.S_IFDIR), (b"..", st.st_ino, stat.S_IFDIR)]
    with os.scandir(fd) as it:  # a duplicate of fd, rewound when done
        for entry in it:
            mode = 0
            if entry.is_symlink():
                mode = stat.S_IFLNK
            elif entry.is_dir(follow_symlinks=False):
                mode = stat.S_IFDIR
            elif entry.is_file(follow_symlinks=False):
                mode = stat.S_IFREG
            out.append((os.fsencode(entry.name), entry.inode(), mode))
    return out
