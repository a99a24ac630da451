"""Fetching Debian packages with apt and reading files out of them.

Packages come from the machine's own apt sources (``apt-get download`` needs
no root); only refreshing empty package lists (``apt-get update``) does.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from pyvmm.errors import UserError
from pyvmm.images.cache import locked, progress

APT_LISTS = Path("/var/lib/apt/lists")


class ImageError(UserError):
    """A default image could not be fetched or built; the message says what to do."""


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=cwd)
    except FileNotFoundError:
        raise ImageError(
            f"{cmd[0]} is not installed (pyvmm builds its images with apt/dpkg)"
        ) from None
    except subprocess.CalledProcessError as e:
        last = (e.stderr or e.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise ImageError(f"{' '.join(cmd[:3])} failed: {last[0]}") from None


def ensure_package_lists() -> None:
    """Run ``apt-get update`` once if apt knows no packages yet."""
    if any(APT_LISTS.glob("*_Packages*")):
        return
    if os.geteuid() != 0:
        raise ImageError("apt has no package lists yet: run 'sudo apt-get update' once")
    progress("apt-get update (apt has no package lists yet)")
    _run(["apt-get", "update", "-q"])


def _compare_versions(a: str, b: str) -> int:
    if a == b:
        return 0
    lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
    return -1 if lt else 1


def candidates(name_regex: str) -> dict[str, str]:
    """Package name -> candidate version, for packages whose names match."""
    ensure_package_lists()
    names = [
        line.split(" - ", 1)[0]
        for line in _run(["apt-cache", "search", "--names-only", name_regex]).stdout.splitlines()
    ]
    if not names:
        return {}
    policy = _run(["apt-cache", "policy", *names]).stdout
    versions = {}
    for block in re.split(r"\n(?=\S)", policy):
        name = block.split(":", 1)[0].strip()
        m = re.search(r"Candidate: (\S+)", block)
        if name in names and m and m.group(1) != "(none)":
            versions[name] = m.group(1)
    return versions


def newest(name_regex: str) -> tuple[str, str]:
    """(name, version) of the package with the highest candidate version."""
    found = candidates(name_regex)
    if not found:
        raise ImageError(f"apt knows no package matching {name_regex!r}")
    key = functools.cmp_to_key(_compare_versions)
    name = max(found, key=lambda n: key(found[n]))
    return name, found[name]


def expected(package: str, version: str) -> tuple[str, int, str]:
    """(file name, size, SHA-256) apt's package lists give for a version."""
    show = _run(["apt-cache", "show", f"{package}={version}"]).stdout
    for block in show.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Version") == version and "SHA256" in fields and "Size" in fields:
            name = fields.get("Filename", f"{package}_{version}.deb").rsplit("/", 1)[-1]
            return name, int(fields["Size"]), fields["SHA256"].strip()
    raise ImageError(f"apt knows no size and checksum for {package} {version}")


def verified(path: Path, size: int, sha256: str) -> bool:
    """Whether ``path`` has exactly this size and SHA-256."""
    try:
        if path.stat().st_size != size:
            return False
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest() == sha256
    except OSError:
        return False


def download(package: str, version: str, dest: Path) -> Path:
    """``package=version`` as a .deb in ``dest``, checked against the size
    and SHA-256 in apt's lists. It is downloaded into a directory of its
    own and renamed into place only once checked, one downloader at a time,
    so a killed download or a full disk never leaves a .deb that looks whole."""
    name, size, sha256 = expected(package, version)
    final = dest / name
    if verified(final, size, sha256):
        return final
    dest.mkdir(parents=True, exist_ok=True)
    with locked(dest / f".{package}.lock"):
        if verified(final, size, sha256):  # another process got it meanwhile
            return final
        for left in dest.glob(f".{package}.*"):  # by a download that was killed
            if left.is_dir():
                shutil.rmtree(left, ignore_errors=True)
        progress(f"downloading {package} {version}")
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{package}."))
        try:
            _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=tmp)
            got = list(tmp.glob("*.deb"))
            if len(got) != 1 or not verified(got[0], size, sha256):
                raise ImageError(
                    f"apt-get download {package} {version}: the file is not what apt's lists say"
                )
            os.replace(got[0], final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _deb_version(deb: Path) -> str:
    return _run(["dpkg-deb", "--field", str(deb), "Version"]).stdout.strip()


def extract(deb: Path, members: list[str]) -> dict[str, bytes]:
    """Read files (paths as in the package, e.g. 'bin/busybox') out of a .deb."""
    wanted = {m.lstrip("./") for m in members}
    found: dict[str, bytes] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                name = info.name.lstrip("./")
                if name in wanted and info.isfile():
                    f = tar.extractfile(info)
                    assert f is not None
                    found[name] = f.read()
    missing = wanted - found.keys()
    if missing:
        raise ImageError(f"{deb.name} has no {', '.join(sorted(missing))}")
    return found
