"""Snapshots of the default guest kept in the image cache, so that tests
start from a booted guest without booting it.

``~/.cache/pyvmm/snapshots/KEY/`` (see :func:`pyvmm.images.cache.cache_dir`),
where KEY is a hash of everything that makes the guest what it is: the
kernel's and the initramfs's bytes, the command line, memory size, vCPUs,
the snapshot format version, and the host (its CPU and whether it is a PVM
host: a snapshot from another CPU is refused). :func:`default_snapshot`
makes one if it is missing, under a lock, so concurrent test processes
(pytest-xdist workers) wait for the first one's boot instead of each
booting.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from pyvmm import shell
from pyvmm.images.cache import cache_dir, progress
from pyvmm.snapshot import format, store
from pyvmm.snapshot.format import SnapshotError
from pyvmm.vmm.config import MachineConfig

#: How long the one boot may take.
BOOT_TIMEOUT = 900.0


def _host() -> bytes:
    """This host's CPU, as far as a snapshot cares."""
    fields = []
    with contextlib.suppress(OSError), open("/proc/cpuinfo", "rb") as f:
        for line in f:
            if line.startswith((b"vendor_id", b"model name", b"flags")):
                fields.append(line)
            elif not line.strip():
                break  # the first CPU is enough
    return b"".join(fields)


def key(config: MachineConfig) -> str:
    h = hashlib.sha256(f"format {format.VERSION}\0pvm {config.quirks.pvm}\0".encode())
    for path in (config.kernel, config.initrd):
        if path is not None:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        h.update(b"\0")
    h.update(f"{config.cmdline}\0{config.memory}\0{config.cpus}\0".encode())
    h.update(f"{len(config.shares)} shares\0{config.command is not None}\0".encode())
    h.update(f"{shell.PREPARE}\0".encode())  # the shell as the snapshot keeps it
    h.update(_host())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (lockf: released if the holder dies)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.lockf(fd, os.F_LOCK, 0)
        yield
    finally:
        os.close(fd)


def _usable(path: Path) -> bool:
    try:
        store.load(path)
    except SnapshotError:
        return False
    return True


def default_snapshot(
    config: MachineConfig, folder: Path | None = None, ready: str | None = None
) -> Path:
    """The cached snapshot of ``config``'s guest with its shell ready (or,
    given ``ready``, once its console prints that), booting it once if there
    is none (or it is damaged). ``folder``: where snapshots are kept
    (default: the cache's ``snapshots``)."""
    from pyvmm.api import Machine

    folder = folder or cache_dir() / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / key(config)
    if _usable(path):
        return path
    with _locked(folder / f"{path.name}.lock"):
        if _usable(path):  # another process made it while we waited
            return path
        store.remove(path)
        progress(f"booting the guest once for the snapshot runs start from ({path})")
        with Machine(config) as machine:
            machine.start()
            if ready is None:
                machine.wait_ready(BOOT_TIMEOUT)
            else:
                machine.wait_for(ready, BOOT_TIMEOUT)
            machine.snapshot(path)
    return path
