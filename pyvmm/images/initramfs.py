"""The default initramfs: busybox-static and pyvmm's /init, as a newc cpio.

The applet links are created in the archive (from ``busybox --list``, run on
the host: busybox-static is a static x86-64 binary), so the guest does not
spend time installing them at boot.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from pyvmm.images import cpio

#: Directories every guest needs before /init runs.
DIRECTORIES = ("bin", "sbin", "dev", "proc", "sys", "tmp", "run", "etc", "root")


def applets(busybox: Path) -> list[str]:
    """The applet names a busybox binary provides."""
    out = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout
    return sorted(name for name in out.split() if name != "busybox")


def entries(
    busybox: Path, init_script: bytes, extra: Sequence[cpio.Entry] = ()
) -> list[cpio.Entry]:
    items = [cpio.directory(d) for d in DIRECTORIES]
    # /dev/console must exist before devtmpfs is mounted: the kernel opens it for init.
    items.append(cpio.char_device("dev/console", 5, 1))
    items.append(cpio.file("bin/busybox", busybox.read_bytes(), 0o755))
    items += [cpio.symlink(f"bin/{name}", "busybox") for name in applets(busybox)]
    items.append(cpio.file("init", init_script, 0o755))
    items.append(cpio.file("etc/profile", b'PS1="pyvmm:\\w# "\nexport PS1\n'))
    items += list(extra)
    return items


def build(busybox: Path, init_script: bytes, extra: Sequence[cpio.Entry] = ()) -> bytes:
    """The archive, uncompressed. Every Linux unpacks a plain cpio, whatever
    its CONFIG_RD_* options, and the guest kernel does the unpacking in kernel
    mode, which a PVM host emulates an instruction at a time: there, gzip at
    level 6 cost about 40 s of boot, and even gzip's stored blocks 12 s more
    than no gzip at all (the CRC-32). Only the host's page cache sees the
    size (about 2 MB)."""
    return cpio.archive(entries(busybox, init_script, extra))


#: Where /init looks for modules to load, in the order of their names.
MODULES_DIR = "lib/modules/pyvmm"


def modules(images: Sequence[bytes], paths: Sequence[str]) -> bytes:
    """A cpio of kernel modules for /init to load: each under MODULES_DIR,
    named with its place in ``paths`` first (01-pvpanic.ko, ...)."""
    items = [cpio.directory(d) for d in ("lib", "lib/modules", MODULES_DIR)]
    for i, (image, path) in enumerate(zip(images, paths, strict=True), 1):
        items.append(cpio.file(f"{MODULES_DIR}/{i:02}-{path.rsplit('/', 1)[-1]}", image))
    return cpio.archive(items)
