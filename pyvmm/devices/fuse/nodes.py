"""What the guest holds in a share: its nodes (looked-up files) and handles
(open files and directories), each pinned by a host descriptor.

The share must not be a door out of its directory. Every node is an
``O_PATH | O_NOFOLLOW`` descriptor opened relative to its parent's
descriptor with one name component that is never ``.``, ``..``, empty or
holding a ``/`` (:func:`check_name`); nothing is ever resolved from a path
the guest gave, so ``..``, absolute or relative symlinks and renames racing
a walk cannot lead outside. A symlink is a node like any other, whose target
is only read (READLINK) and resolved by the guest inside its own mount. A
node's descriptor names an inode, not a path, so a file swapped for a
symlink after the lookup changes nothing. Opening a node for reading or
writing reopens it through ``/proc/self/fd`` (the only way to turn an
``O_PATH`` descriptor into an open file), and is refused unless the node is
a regular file or a directory: never a symlink (which that reopening would
follow on the host), a device node or a FIFO.

For snapshots a node also remembers its parent and the name it was found
by; a restored server finds it again by that path, one component at a
time, and a node whose file is gone reads as stale (ESTALE).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from pyvmm.devices.fuse.protocol import NAME_MAX, ROOT_ID

#: Open flags a guest may not pass on: pyvmm decides about creating, and
#: the host's controlling terminal and following symlinks are not the
#: guest's business.
STRIPPED_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW
#: Most nodes held at once (each holds a descriptor until the guest forgets
#: it); beyond, lookups fail with ENFILE rather than starve pyvmm of them.
MAX_NODES = 1 << 18
#: Flags that change a file.
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


def check_name(name: bytes) -> str:
    """One directory entry's name, or EINVAL: what keeps every lookup one
    step down from a node the share already holds."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise OSError(errno.EINVAL, "not a name inside a directory")
    if len(name) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, "name too long")
    return os.fsdecode(name)


def proc_path(fd: int) -> str:
    """The magic link that reopens ``fd``'s inode."""
    return f"/proc/self/fd/{fd}"


@dataclass
class Node:
    """A file the guest looked up: ``lookups`` counts the kernel's
    references (it FORGETs them); ``parent`` and ``name`` are how it was
    found, for a restore."""

    nodeid: int
    fd: int
    dev: int
    ino: int
    parent: int
    name: str
    lookups: int = 0


@dataclass
class Handle:
    """An open file or directory (the ``fh`` of OPEN and OPENDIR)."""

    fh: int
    nodeid: int
    fd: int
    flags: int
    is_dir: bool
    #: A directory's entries, read at its first READDIR: (name, ino, mode).
    entries: list[tuple[bytes, int, int]] | None = None


@dataclass
class Nodes:
    """The node and handle tables of one share."""

    root: str
    nodes: dict[int, Node] = field(default_factory=dict)
    handles: dict[int, Handle] = field(default_factory=dict)
    _by_inode: dict[tuple[int, int], int] = field(default_factory=dict)
    _next_node: int = ROOT_ID + 1
    _next_handle: int = 1

    def __post_init__(self) -> None:
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        self._add(Node(ROOT_ID, fd, st.st_dev, st.st_ino, ROOT_ID, "", lookups=1))

    def _add(self, node: Node) -> Node:
        self.nodes[node.nodeid] = node
        self._by_inode[(node.dev, node.ino)] = node.nodeid
        return node

    def get(self, nodeid: int) -> Node:
        node = self.nodes.get(nodeid)
        if node is None:
            raise OSError(errno.ESTALE, "no such node")
        return node

    def stat(self, node: Node) -> os.stat_result:
        return os.stat(node.fd)  # fstat works on O_PATH descriptors

    def lookup(self, parent: Node, name: bytes) -> tuple[Node, os.stat_result]:
        """Find ``name`` in ``parent``, adding a reference to its node."""
        text = check_name(name)
        if len(self.nodes) >= MAX_NODES:
            raise OSError(errno.ENFILE, "too many files held")
        fd, st = _open_child(parent, text)
        known = self._by_inode.get((st.st_dev, st.st_ino))
        if known is not None and known in self.nodes:
            os.close(fd)
            node = self.nodes[known]
            if node.nodeid != ROOT_ID:
                node.parent, node.name = parent.nodeid, text  # its latest name
        else:
            node = self._add(Node(self._next_node, fd, st.st_dev, st.st_ino, parent.nodeid, text))
            self._next_node += 1
        node.lookups += 1
        return node, st

    def forget(self, nodeid: int, count: int) -> None:
        node = self.nodes.get(nodeid)
        if node is None or nodeid == ROOT_ID:
            return
        node.lookups -= min(count, node.lookups)
        if node.lookups == 0:
            del self.nodes[nodeid]
            if self._by_inode.get((node.dev, node.ino)) == nodeid:
                del self._by_inode[(node.dev, node.ino)]
            os.close(node.fd)

    def renamed(self, parent: Node, old: str, new_parent: Node, new: str) -> None:
        """Keep the path of a node that was just renamed."""
        for node in self.nodes.values():
            if node.parent == parent.nodeid and node.name == old and node.nodeid != ROOT_ID:
                node.parent, node.name = new_parent.nodeid, new

    def open(self, node: Node, flags: int, *, directory: bool) -> Handle:
        """Reopen a node as a file or directory (refused for anything else)."""
        mode = self.stat(node).st_mode
        if directory and not stat.S_ISDIR(mode):
            raise OSError(errno.ENOTDIR, "not a directory")
        if not directory and stat.S_ISDIR(mode):
            raise OSError(errno.EISDIR, "is a directory")
        if stat.S_ISLNK(mode):
            raise OSError(errno.ELOOP, "a symlink is not opened on the host")
        if not directory and not stat.S_ISREG(mode):
            raise OSError(errno.EACCES, "only regular files are opened on the host")
        flags = (flags & ~STRIPPED_FLAGS) | os.O_CLOEXEC
        if directory:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        fd = os.open(proc_path(node.fd), flags)
        return self.keep(node, fd, flags, directory=directory)

    def keep(self, node: Node, fd: int, flags: int, *, directory: bool) -> Handle:
        handle = Handle(self._next_handle, node.nodeid, fd, flags, directory)
        self._next_handle += 1
        self.handles[handle.fh] = handle
        return handle

    def handle(self, fh: int) -> Handle:
        handle = self.handles.get(fh)
        if handle is None:
            raise OSError(errno.EBADF, "no such handle")
        return handle

    def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is not None:
            os.close(handle.fd)

    def close(self) -> None:
        for handle in list(self.handles.values()):
            self.release(handle.fh)
        for node in self.nodes.values():
            os.close(node.fd)
        self.nodes.clear()
        self._by_inode.clear()

    # -- snapshots ---------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "nodes": [[n.nodeid, n.parent, n.name, n.lookups] for n in self.nodes.values()],
            "handles": [[h.fh, h.nodeid, h.flags, int(h.is_dir)] for h in self.handles.values()],
            "next_node": self._next_node,
            "next_handle": self._next_handle,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Find every node again by its path under this server's root (which
        may hold changed files: those are seen as they are now), reopen
        every handle; a node whose file is gone stays out (ESTALE)."""
        try:
            saved = {int(n[0]): (int(n[1]), str(n[2]), int(n[3])) for n in state["nodes"]}
            handles = [(int(h[0]), int(h[1]), int(h[2]), bool(h[3])) for h in state["handles"]]
            next_node, next_handle = int(state["next_node"]), int(state["next_handle"])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ValueError(f"share state: {e}") from None
        if len(saved) > 1 << 20 or not all(0 < i < next_node for i in saved):
            raise ValueError("share state: node numbers out of range")
        self._next_node, self._next_handle = next_node, next_handle
        for nodeid in sorted(saved):
            self._find(nodeid, saved, set())
        for fh, nodeid, flags, is_dir in handles:
            node = self.nodes.get(nodeid)
            if node is None or not 0 < fh < next_handle:
                continue
            try:
                handle = self.open(node, flags & ~os.O_TRUNC, directory=is_dir)
            except OSError:
                continue
            del self.handles[handle.fh]
            handle.fh = fh
            self.handles[fh] = handle

    def _find(self, nodeid: int, saved: dict[int, tuple[int, str, int]], seen: set[int]) -> None:
        """Open ``nodeid`` and any ancestors not open yet, root first (a
        loop, not recursion: a tree may be deep, a state file hostile)."""
        path = []
        while nodeid not in self.nodes and nodeid in saved and nodeid not in seen:
            seen.add(nodeid)
            path.append(nodeid)
            nodeid = saved[nodeid][0]
        for nodeid in reversed(path):
            parent_id, name, lookups = saved[nodeid]
            parent = self.nodes.get(parent_id)
            if parent is None:
                return
            try:
                text = check_name(os.fsencode(name))
                fd, st = _open_child(parent, text)
            except OSError:
                return
            self._add(Node(nodeid, fd, st.st_dev, st.st_ino, parent_id, text, max(lookups, 1)))


def _open_child(parent: Node, name: str) -> tuple[int, os.stat_result]:
    """``name`` (already checked) in ``parent``: an ``O_PATH`` descriptor
    that follows no symlink, and what it is."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.fd)
    try:
        return fd, os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
