"""The image cache under interruption and concurrency: a build killed at any
moment, two builders at once, a partial download, a half-written image:
a later run uses a complete, verified image or builds it again. Uses apt
for busybox-static (about 1 MB) in a cache of its own."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyvmm.images import cache, debian, default
from tests.cli_util import one_line_error


def images(cache_dir: Path, *which: str, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYVMM_CACHE": str(cache_dir)}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "pyvmm", "images", *which],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,
    )  # fmt: skip


def built(cache_dir: Path) -> Path:
    proc = images(cache_dir, "initramfs")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return Path(out.splitlines()[-1].strip())


@pytest.fixture(scope="module")
def apt_ready() -> None:
    try:
        debian.newest(f"^{default.BUSYBOX_PACKAGE}$")
    except debian.ImageError as e:
        pytest.skip(f"apt cannot help here: {e}")


@pytest.mark.usefixtures("apt_ready")
def test_a_build_killed_at_any_moment_leaves_nothing_a_later_run_trusts(tmp_path: Path) -> None:
    rng = random.Random(6)
    for i in range(6):
        where = tmp_path / f"cache{i}"
        proc = images(where, "initramfs")
        time.sleep(rng.uniform(0.05, 2.5))  # during apt, the download, the packing, or after
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        path = built(where)  # a complete image, built or rebuilt
        assert cache.matches_manifest(path.parent, deep=True)
        # Nothing half-made is left: hidden names are only the builders' lock files.
        hidden = [p.name for p in where.rglob(".*")]
        assert all(name.endswith(".lock") for name in hidden), hidden


@pytest.mark.usefixtures("apt_ready")
def test_two_builders_at_once_build_once(tmp_path: Path) -> None:
    first, second = images(tmp_path, "initramfs"), images(tmp_path, "initramfs")
    out1, err1 = first.communicate(timeout=600)
    out2, err2 = second.communicate(timeout=600)
    assert first.returncode == second.returncode == 0, err1 + err2
    assert out1.splitlines()[-1] == out2.splitlines()[-1]
    assert (err1 + err2).count("downloading busybox-static") == 1
    assert (err1 + err2).count("packing the initramfs") == 1


@pytest.mark.usefixtures("apt_ready")
def test_a_partial_download_is_never_used(tmp_path: Path) -> None:
    package, version = debian.newest(f"^{default.BUSYBOX_PACKAGE}$")
    name, size, sha256 = debian.expected(package, version)
    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / name).write_bytes(b"!<arch>\n" + bytes(1000))  # what a full disk left behind
    os.environ["PYVMM_CACHE"] = str(tmp_path)
    try:
        deb = debian.download(package, version, debs)
    finally:
        del os.environ["PYVMM_CACHE"]
    assert deb == debs / name and debian.verified(deb, size, sha256)


def test_a_staging_folder_or_a_truncated_image_is_never_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYVMM_CACHE", str(tmp_path))
    stock = tmp_path / "stock"
    staging = stock / ".6.12.117+deb12-cloud-amd64.4483.f1rrco_e"
    staging.mkdir(parents=True)
    (staging / "vmlinux").write_bytes(b"")  # a killed `pyvmm images stock`
    assert default._newest_cached(list(stock.glob("*"))) is None
    whole = stock / "6.12.117+deb12-cloud-amd64"
    whole.mkdir()
    for name in ("bzImage", "vmlinux"):
        (whole / name).write_bytes(name.encode() * 1000)
    cache.write_manifest(whole, ["bzImage", "vmlinux"])
    assert default._newest_cached(list(stock.glob("*"))) == whole
    os.truncate(whole / "vmlinux", 100)  # damaged after it was made
    assert default._newest_cached(list(stock.glob("*"))) is None


@pytest.mark.usefixtures("apt_ready")
def test_a_cache_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    proc = images(Path("/proc/pyvmm-cache"), "initramfs")
    out, err = proc.communicate(timeout=120)
    one_line_error(
        subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
        "cannot write the image cache",
    )
