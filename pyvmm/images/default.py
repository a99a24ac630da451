"""The default guest's images, fetched or built into the cache on first use.

- the stock kernel: Debian's newest ``linux-image-*-cloud-amd64-unsigned``,
  as shipped (a bzImage) and as the vmlinux ELF extracted from it;
- the small kernel: Linux from Debian's ``linux-source-6.1``, configured with
  ``make tinyconfig`` plus images/small-kernel.config;
- the initramfs: ``busybox-static`` and images/init in a newc cpio.

Each lives in a directory named after what it was built from, so a new
package version or an edited config fragment gives a new image. Without
``refresh``, an image already in the cache is used as it is (no apt query, so
this works offline); ``pyvmm images`` refreshes: it asks apt for the newest
versions and builds whatever is missing.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pyvmm.boot.bzimage import compression, payload
from pyvmm.images import GUEST_KINDS, cpio, debian, initramfs
from pyvmm.images.cache import (
    cache_dir,
    locked,
    matches_manifest,
    progress,
    staging_dir,
    visible,
    write_atomic,
)
from pyvmm.images.debian import ImageError
from pyvmm.images.vmlinux import extract_vmlinux

T = TypeVar("T")

#: The initramfs's file name in its cache folder.
INITRAMFS = "initramfs.cpio"
#: The repository's images/ directory: the init script and the config fragment.
IMAGES_SRC = Path(__file__).resolve().parents[2] / "images"

STOCK_PACKAGES = r"^linux-image-[0-9.+a-z-]*-cloud-amd64-unsigned$"
SMALL_SOURCE_PACKAGE = "linux-source-6.1"
BUSYBOX_PACKAGE = "busybox-static"
#: Changing how an image is built changes its cache key through this.
BUILDER_VERSION = "2"
#: Host tools the small kernel build needs, and the Debian packages with them.
KERNEL_BUILD_TOOLS = {"make": "make", "gcc": "gcc", "flex": "flex", "bison": "bison",
                      "bc": "bc", "perl": "perl"}  # fmt: skip
KERNEL_BUILD_HEADERS = {"/usr/include/libelf.h": "libelf-dev"}


#: Modules of the stock kernel that the default guest loads, dependencies
#: first (paths under lib/modules/RELEASE/kernel/): pvpanic's ACPI device
#: driver, without which a panicking guest hangs instead of telling pyvmm,
#: and virtio-mmio with the block, network, entropy, console and file
#: system (virtio-fs) devices.
STOCK_MODULES = (
    "drivers/misc/pvpanic/pvpanic.ko",
    "drivers/misc/pvpanic/pvpanic-mmio.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/char/hw_random/virtio-rng.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "drivers/char/virtio_console.ko",
    "fs/fuse/fuse.ko",
    "fs/fuse/virtiofs.ko",
)


@dataclass(frozen=True)
class Kernel:
    name: str  # e.g. "6.12.117+deb12-cloud-amd64"
    bzimage: Path
    vmlinux: Path
    #: A cpio of the modules the initramfs must add (/lib/modules/pyvmm).
    modules: Path | None = None


def _source_file(name: str) -> Path:
    path = IMAGES_SRC / name
    if not path.is_file():
        raise ImageError(f"{path} is missing: building images needs a pyvmm source checkout")
    return path


def _key(*parts: bytes | str) -> str:
    h = hashlib.sha256(BUILDER_VERSION.encode())
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:12]


#: The stock kernel's modules as a newc cpio for the initramfs; named after
#: the list, so a new list makes the stock image again.
MODULES = f"modules-{_key(*STOCK_MODULES)}.cpio"


def _debs() -> Path:
    return cache_dir() / "debs"


def _newest_cached(folders: list[Path]) -> Path | None:
    """The newest complete image folder among ``folders``: not a staging
    folder (hidden), and its files as its manifest says."""
    complete = [f for f in visible(iter(folders)) if matches_manifest(f)]
    return max(complete, key=lambda f: f.stat().st_mtime) if complete else None


def cache_errors(build: Callable[..., T]) -> Callable[..., T]:
    """A full or read-only cache is a one-line ImageError, not a traceback."""

    @functools.wraps(build)
    def building(*args: Any, **kwargs: Any) -> T:
        try:
            return build(*args, **kwargs)
        except OSError as e:
            where = e.filename or cache_dir()
            raise ImageError(f"cannot write the image cache ({where}): {e.strerror or e}") from None

    return building


# -- stock kernel ------------------------------------------------------------


@cache_errors
def stock_kernel(refresh: bool = False) -> Kernel:
    """Debian's newest cloud kernel: its bzImage and the vmlinux inside it."""
    if not refresh:
        folders = [f for f in (cache_dir() / "stock").glob("*") if (f / MODULES).exists()]
        cached = _newest_cached(folders)
        if cached is not None:
            return _stock(cached.name, cached)
    package, version = debian.newest(STOCK_PACKAGES)
    release = package.removeprefix("linux-image-").removesuffix("-unsigned")
    final = cache_dir() / "stock" / release
    with locked(final.parent / f".{final.name}.lock"):
        if matches_manifest(final, deep=refresh) and (final / MODULES).exists():
            return _stock(release, final)
        _build_stock(package, version, release, final)
    return _stock(release, final)


def _stock(release: str, folder: Path) -> Kernel:
    return Kernel(release, folder / "bzImage", folder / "vmlinux", folder / MODULES)


def _build_stock(package: str, version: str, release: str, final: Path) -> None:
    deb = debian.download(package, version, _debs())
    modules = [f"lib/modules/{release}/kernel/{m}" for m in STOCK_MODULES]
    files = debian.extract(deb, [f"boot/vmlinuz-{release}", f"boot/config-{release}", *modules])
    bzimage = files[f"boot/vmlinuz-{release}"]
    progress(
        f"extracting vmlinux from {release}'s bzImage ({compression(payload(bzimage))} payload)"
    )
    with staging_dir(final) as tmp:
        (tmp / "bzImage").write_bytes(bzimage)
        (tmp / "config").write_bytes(files[f"boot/config-{release}"])
        (tmp / "vmlinux").write_bytes(extract_vmlinux(bzimage))
        (tmp / MODULES).write_bytes(initramfs.modules([files[m] for m in modules], modules))


# -- small kernel ------------------------------------------------------------


def _check_build_tools() -> None:
    missing = [pkg for tool, pkg in KERNEL_BUILD_TOOLS.items() if shutil.which(tool) is None]
    missing += [pkg for header, pkg in KERNEL_BUILD_HEADERS.items() if not Path(header).exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ImageError(
            f"building the small kernel needs: sudo apt-get install {' '.join(missing)}"
        )
    progress(f"installing kernel build tools: {' '.join(missing)}")
    debian.ensure_package_lists()
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-q", *missing], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise ImageError(f"apt-get install {' '.join(missing)} failed: {proc.stderr.strip()}")


def _kernel_source(version: str) -> Path:
    """The unpacked linux-source tree for ``version``, unpacking it once
    (the tree appears, renamed from its staging folder, only once whole)."""
    tree = cache_dir() / "src" / f"{SMALL_SOURCE_PACKAGE}-{version}"
    if (tree / "Makefile").is_file():
        return tree
    with locked(tree.parent / f".{tree.name}.lock"):
        if (tree / "Makefile").is_file():
            return tree
        _unpack_source(version, tree)
    return tree


def _unpack_source(version: str, tree: Path) -> None:
    deb = debian.download(SMALL_SOURCE_PACKAGE, version, _debs())
    tarball = f"usr/src/{SMALL_SOURCE_PACKAGE}.tar.xz"
    progress(f"unpacking {SMALL_SOURCE_PACKAGE} {version}")
    with staging_dir(tree) as tmp:
        (tmp / "src.tar.xz").write_bytes(debian.extract(deb, [tarball])[tarball])
        subprocess.run(["tar", "-xJf", "src.tar.xz", "--strip-components=1"], cwd=tmp, check=True)
        (tmp / "src.tar.xz").unlink()


@cache_errors
def small_kernel(refresh: bool = False) -> Kernel:
    """The small kernel, built from source the first time (minutes)."""
    fragment = _source_file("small-kernel.config")
    fragment_key = _key(fragment.read_bytes())
    if not refresh:
        cached = _newest_cached(list((cache_dir() / "small").glob(f"*-{fragment_key}")))
        if cached is not None:
            version = cached.name.removesuffix(f"-{fragment_key}")
            return Kernel(f"{version} small", cached / "bzImage", cached / "vmlinux")
    package, version = SMALL_SOURCE_PACKAGE, debian.newest(f"^{SMALL_SOURCE_PACKAGE}$")[1]
    final = cache_dir() / "small" / f"{version}-{fragment_key}"
    kernel = Kernel(f"{version} small", final / "bzImage", final / "vmlinux")
    with locked(final.parent / f".{final.name}.lock"):
        if matches_manifest(final, deep=refresh):
            return kernel
        _build_small(package, version, final, fragment)
    return kernel


def _build_small(package: str, version: str, final: Path, fragment: Path) -> None:
    _check_build_tools()
    src = _kernel_source(version)
    jobs = str(os.cpu_count() or 1)
    with staging_dir(final) as tmp:
        build = tmp / "build"
        log = final.parent / f"{final.name}.log"
        progress(f"building the small kernel from {package} {version} (a few minutes; log: {log})")
        steps = [
            ["make", "-C", str(src), f"O={build}", "tinyconfig"],
            [str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(build),
             str(build / ".config"), str(fragment)],
            ["make", "-C", str(src), f"O={build}", "olddefconfig"],
            ["make", "-C", str(src), f"O={build}", f"-j{jobs}", "vmlinux", "bzImage"],
        ]  # fmt: skip
        with open(log, "w") as out:
            for step in steps:
                if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode:
                    raise ImageError(f"small kernel build failed at '{step[-1]}': see {log}")
        shutil.copy(build / "vmlinux", tmp / "vmlinux")
        shutil.copy(build / "arch/x86/boot/bzImage", tmp / "bzImage")
        shutil.copy(build / ".config", tmp / "config")
        shutil.rmtree(build)


# -- initramfs ---------------------------------------------------------------


@cache_errors
def initramfs_image(refresh: bool = False) -> Path:
    """busybox-static, /init and /bin/pyvmm-run, as an uncompressed newc cpio."""
    init = _source_file("init").read_bytes()
    runner = _source_file(RUNNER_SOURCE).read_bytes()
    init_key = _key(init, runner, "plain")
    if not refresh:
        cached = _newest_cached(list((cache_dir() / "initramfs").glob(f"*-{init_key}")))
        if cached is not None:
            return cached / INITRAMFS
    package, version = debian.newest(f"^{BUSYBOX_PACKAGE}$")
    final = cache_dir() / "initramfs" / f"busybox-{version.replace(':', '_')}-{init_key}"
    with locked(final.parent / f".{final.name}.lock"):
        if not matches_manifest(final, deep=refresh):
            _build_initramfs(package, version, init, final)
    return final / INITRAMFS


#: The guest's helper for ``pyvmm run -- CMD`` (C, built static with gcc).
RUNNER_SOURCE = "pyvmm-run.c"


def _build_initramfs(package: str, version: str, init: bytes, final: Path) -> None:
    deb = debian.download(package, version, _debs())
    busybox = debian.extract(deb, ["bin/busybox"])["bin/busybox"]
    progress(f"packing the initramfs (busybox {version})")
    with staging_dir(final) as tmp:
        exe = tmp / "busybox"
        exe.write_bytes(busybox)
        exe.chmod(0o755)  # run on the host for its list of applets
        runner = tmp / "pyvmm-run"
        _compile_static(_source_file(RUNNER_SOURCE), runner)
        extra = [cpio.file("bin/pyvmm-run", runner.read_bytes(), 0o755)]
        (tmp / INITRAMFS).write_bytes(initramfs.build(exe, init, extra))
        exe.unlink()
        runner.unlink()


def _compile_static(source: Path, out: Path) -> None:
    """A static x86-64 executable from one C file (glibc's libc.a: libc6-dev)."""
    command = ["gcc", "-static", "-Os", "-s", "-o", str(out), str(source)]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise ImageError("building the initramfs needs gcc (apt-get install gcc)") from None
    except subprocess.CalledProcessError as e:
        raise ImageError(f"gcc could not build {source.name}: {e.stderr.strip()[-500:]}") from None


# -- the default guest -------------------------------------------------------

#: The default guest's command line: console on COM1; the i8042 options stop
#: Linux probing for a mouse and keyboard that are not there.
DEFAULT_CMDLINE = "console=ttyS0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"


@dataclass(frozen=True)
class Guest:
    kernel: Path
    initrd: Path
    cmdline: str
    description: str


def default_guest(kind: str = "auto", pvm_host: bool = False) -> Guest:
    """The kernel, initramfs and command line ``pyvmm run`` boots by default.

    "auto" is Debian's stock kernel, except on a host that emulates guest
    kernel mode (PVM), where the small kernel boots in a fraction of the time.
    Both are loaded as vmlinux ELF files, which skips the kernel's own
    decompressor.
    """
    if kind not in GUEST_KINDS:
        raise ImageError(f"unknown guest {kind!r}: choose from {', '.join(GUEST_KINDS)}")
    if kind == "auto":
        kind = "small" if pvm_host else "stock"
    kernel = small_kernel() if kind == "small" else stock_kernel()
    what = "small kernel" if kind == "small" else "Debian stock kernel"
    return Guest(
        kernel=kernel.vmlinux,
        initrd=_with_modules(initramfs_image(), kernel.modules),
        cmdline=DEFAULT_CMDLINE,
        description=f"Linux {kernel.name} ({what}) with the busybox initramfs",
    )


@cache_errors
def _with_modules(initrd: Path, modules: Path | None) -> Path:
    """``initrd`` followed by the kernel's modules cpio, kept beside the
    modules. Linux unpacks concatenated cpio archives one after the other
    (Documentation/driver-api/early-userspace/buffer-format.rst)."""
    if modules is None:
        return initrd
    both = modules.parent / f"initramfs-{initrd.parent.name}.cpio"
    size = initrd.stat().st_size + modules.stat().st_size
    if not both.exists() or both.stat().st_size != size:
        write_atomic(both, initrd.read_bytes() + modules.read_bytes())
    return both
