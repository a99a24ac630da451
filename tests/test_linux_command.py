"""``pyvmm run -- CMD`` with a real Linux guest: the command's status,
output, input and the current directory shared with it (virtio-fs).

The first run boots the default guest once for the snapshot every run
restores (see pyvmm.command); a module fixture makes that run, so the
tests time only restores."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_util import finish

pytestmark = pytest.mark.hwkvm

#: A boot for the snapshot on a PVM host takes 60-95 s; a restored run a few.
FIRST_TIMEOUT = 600
TIMEOUT = 120


def run(
    *args: str, cwd: Path, stdin: bytes = b"", timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    """``python -m pyvmm run ARGS`` in ``cwd``, bytes in and out; a hang
    fails the test (cli_util.finish)."""
    with subprocess.Popen(
        [sys.executable, "-m", "pyvmm", "run", *args], cwd=cwd,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as process:  # fmt: skip
        out, err = finish(process, timeout, stdin)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def ready(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The snapshot the runs restore, made by the first run if need be."""
    r = run("--", "true", cwd=tmp_path_factory.mktemp("first"), timeout=FIRST_TIMEOUT)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def here(tmp_path: Path, ready: None) -> Path:
    (tmp_path / "file").write_text("from the host\n")
    return tmp_path


@pytest.mark.parametrize(
    ("command", "status"),
    [(["true"], 0), (["false"], 1), (["sh", "-c", "exit 7"], 7), (["sh", "-c", "kill -9 $$"], 137)],
)
def test_the_commands_status_is_pyvmms(here: Path, command: list[str], status: int) -> None:
    r = run("--", *command, cwd=here)
    assert r.returncode == status, r.stderr
    assert r.stdout == b"" and r.stderr == b""


def test_output_input_and_arguments_pass_exactly(here: Path) -> None:
    noise = os.urandom(256 * 1024)
    (here / "noise").write_bytes(noise)
    r = run("--", "sh", "-c", 'cat noise; echo "to stderr: $1" >&2', "sh", "a 'b' \"c\"", cwd=here)
    assert r.returncode == 0
    assert r.stdout == noise  # binary, byte for byte, and nothing else
    assert r.stderr == b"to stderr: a 'b' \"c\"\n"
    r = run("--", "sh", "-c", "tr a-z A-Z; echo end", cwd=here, stdin=b"typed in\nand more\n")
    assert r.stdout == b"TYPED IN\nAND MORE\nend\n"
    r = run("--", "printf", "[%s]", "two words", "", "$HOME", "*", cwd=here)
    assert r.stdout == b"[two words][][$HOME][*]"


def test_the_current_directory_is_shared(here: Path) -> None:
    r = run("--", "sh", "-c", "pwd; ls; cat file; echo x > out; mkdir d; ln -s file d/l", cwd=here)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{here}\nfile\nfrom the host\n".encode()
    assert (here / "out").read_text() == "x\n"
    assert os.readlink(here / "d" / "l") == "file"
    r = run("--no-share", "--", "ls", str(here), cwd=here)
    assert r.returncode != 0


def test_shares_read_only_and_elsewhere(
    here: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = tmp_path_factory.mktemp("other")
    (other / "kept").write_text("kept\n")
    r = run(
        "--share", f"{other}:/mnt/other,ro", "--", "sh", "-c",
        "cat /mnt/other/kept; echo x > /mnt/other/new; rm /mnt/other/kept", cwd=here,
    )  # fmt: skip
    assert r.returncode == 1 and r.stdout == b"kept\n"
    assert b"Read-only file system" in r.stderr
    assert sorted(os.listdir(other)) == ["kept"]


def test_a_guest_cannot_leave_the_share(here: Path) -> None:
    """Every way out tried from inside the guest, as root."""
    outside = here.parent / f"{here.name}-outside"
    outside.mkdir()
    (outside / "secret").write_text("secret\n")
    (here / "abs").symlink_to(outside / "secret")
    (here / "rel").symlink_to(f"../{outside.name}/secret")
    (here / "updir").symlink_to("..")
    attempts = [
        "cat abs", "cat rel", f"ls updir/{outside.name}", "cat ../" + outside.name + "/secret",
        "cat updir/" + outside.name + "/secret", "mknod mem c 1 1", "mknod disk b 8 0",
        "ln abs hard && cat hard", "ln -s /proc/self/root/" + str(outside) + " p && cat p/secret",
    ]  # fmt: skip
    script = "; ".join(f"if {{ {a}; }} 2>/dev/null; then echo ESCAPED: {a}; fi" for a in attempts)
    r = run("--", "sh", "-c", script, cwd=here)
    assert b"ESCAPED" not in r.stdout and b"secret" not in r.stdout, r.stdout
    assert not (here / "mem").exists() and not (here / "disk").exists()
    assert (outside / "secret").read_text() == "secret\n"


def test_timeouts_and_panics_keep_their_status(here: Path) -> None:
    started = time.monotonic()
    r = run("--timeout", "5", "--", "sleep", "60", cwd=here)
    assert r.returncode == 124 and time.monotonic() - started < 10 + 5  # + Python's start
    assert b"did not finish within 5 s" in r.stderr
    r = run("--", "sh", "-c", "echo c > /proc/sysrq-trigger", cwd=here)
    assert r.returncode == 7, r.stderr


def test_a_snapshot_taken_with_a_share_mounted_restores(tmp_path: Path) -> None:
    """Booted with a share, read through it, saved; changed on the host;
    restored: the share works, and shows the host's change."""
    from pyvmm import Machine

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "f").write_text("before\n")
    (shared / "d").mkdir()
    (shared / "d" / "g").write_text("deep\n")
    snap = tmp_path / "snap"
    with Machine(shares=[f"{shared}:/mnt/s"]) as m:
        m.start()
        m.wait_ready(FIRST_TIMEOUT)
        assert m.run("cat /mnt/s/f /mnt/s/d/g").output == "before\ndeep\n"
        m.snapshot(snap)
    (shared / "f").write_text("after\n")
    (shared / "d" / "g").write_text("changed\n")
    (shared / "new").write_text("new\n")
    with Machine(restore=snap) as m:
        m.start()
        r = m.run("sleep 1; cat /mnt/s/f /mnt/s/d/g /mnt/s/new; echo w > /mnt/s/w")
        assert r.status == 0, r.output
        assert r.output == "after\nchanged\nnew\n"
    assert (shared / "w").read_text() == "w\n"


def test_a_guest_changed_by_options_boots_for_the_command(here: Path) -> None:
    """--cmdline (as --kernel, --disk, ...) makes a guest the snapshot is
    not: it boots, and the command's words come on its command line."""
    script = "grep -o pyvmm.test=1 /proc/cmdline; cat file; exit 3"
    r = run("--cmdline", "pyvmm.test=1", "--", "sh", "-c", script, cwd=here, timeout=FIRST_TIMEOUT)
    assert r.returncode == 3, r.stderr
    assert r.stdout == b"pyvmm.test=1\nfrom the host\n"


def test_the_guests_clock_is_the_hosts(here: Path) -> None:
    """However old the snapshot, the command sees the host's time."""
    before = time.time()
    r = run("--", "date", "+%s", cwd=here)
    after = time.time()
    assert before - 2 <= int(r.stdout) <= after + 2, (before, r.stdout, after)
    assert r.stderr == b""
