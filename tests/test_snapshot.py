"""Snapshots and clones with the counting test guest (KVM), through the
Python API and the command line; and every way a snapshot can be wrong."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pyvmm as pyvmm_api
from pyvmm.snapshot import store
from pyvmm.snapshot.format import SnapshotError
from tests.cli_util import one_line_error, pyvmm
from tests.counting import goes_on, numbers
from tests.guests.build import Guests
from tests.snapshot_util import rewrite

pytestmark = [pytest.mark.usefixtures("kvm"), pytest.mark.hwkvm]


def counting(guests: Guests) -> pyvmm_api.Machine:
    m = pyvmm_api.Machine(kernel=guests.elf, memory="64M", cmdline="action=count")
    m.start()
    return m


@pytest.fixture
def snapshot(guests: Guests, tmp_path: Path) -> tuple[Path, str]:
    """A snapshot of the counting guest, and what it printed before it."""
    with counting(guests) as m:
        m.wait_for(r"^count 25\n", timeout=60)
        m.pause()  # so what it printed is all the snapshot holds
        before = m.console
        m.snapshot(tmp_path / "snap")
    return tmp_path / "snap", before


def test_three_clones_go_on_from_the_snapshot_and_the_original_too(
    guests: Guests, tmp_path: Path
) -> None:
    with counting(guests) as original:
        original.wait_for(r"^count 25\n", timeout=60)
        original.pause()
        before = original.console
        n = numbers(before)[-1]
        taken = original.snapshot(tmp_path / "snap")
        assert original.exit_status is None  # paused before: paused after
        original.resume()
        clones = [pyvmm_api.Machine(restore=tmp_path / "snap") for _ in range(3)]
        try:
            for c in clones:
                c.start()  # side by side
            for c in clones:
                c.wait_for(rf"^count {n + 20}\n", timeout=60)
                assert goes_on(before, c.console)[0] in (n + 1, n + 2)
        finally:
            for c in clones:
                c.close()
        original.wait_for(rf"^count {n + 20}\n", timeout=60)
        seen = numbers(original.console)
        assert seen == list(range(1, len(seen) + 1))
    assert taken.paused_seconds < 5


def test_a_restored_guest_can_be_snapshotted_again(
    snapshot: tuple[Path, str], tmp_path: Path
) -> None:
    path, before = snapshot
    with pyvmm_api.Machine(restore=path) as clone:
        clone.start()
        clone.wait_for(rf"^count {numbers(before)[-1] + 10}\n", timeout=60)
        clone.pause()
        before += clone.console
        clone.snapshot(tmp_path / "again")
    with pyvmm_api.Machine(restore=tmp_path / "again") as second:
        second.start()
        second.wait_for(rf"^count {numbers(before)[-1] + 5}\n", timeout=60)
        goes_on(before, second.console)


def test_snapshot_into_an_existing_or_unwritable_place_leaves_the_guest_running(
    guests: Guests, tmp_path: Path
) -> None:
    (tmp_path / "taken").mkdir()
    with counting(guests) as m:
        m.wait_for(r"^count 3\n", timeout=60)
        with pytest.raises(SnapshotError, match="already exists"):
            m.snapshot(tmp_path / "taken")
        with pytest.raises(SnapshotError, match="cannot write"):
            m.snapshot(tmp_path / "missing" / "snap")
        n = numbers(m.console)[-1]
        m.wait_for(rf"^count {n + 3}\n", timeout=60)  # still counting
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_cli_snapshot_after_a_match_then_restore(guests: Guests, tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    r = pyvmm(
        "run", "--kernel", guests.elf, "--memory", "64M", "--cmdline", "action=count",
        "--snapshot", snap, "--snapshot-after", "^count 30$", "--snapshot-then", "exit",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"pyvmm: snapshot saved to .*guest paused \d+ ms\)\n", r.stderr)
    last = numbers(r.stdout)[-1]
    assert last >= 30
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyvmm", "run", "--restore", str(snap)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the rest of a line cut short, or the next
        if not first.startswith("count"):
            first += proc.stdout.readline()
        assert goes_on(r.stdout, first)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 143
    finally:
        proc.kill()
        proc.communicate()


def test_cli_snapshot_on_sigusr1(guests: Guests, tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    cmd = [sys.executable, "-m", "pyvmm", "run", "--kernel", str(guests.elf), "--memory", "64M",
           "--cmdline", "action=count", "--snapshot", str(snap)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        while proc.stdout.readline() != "count 5\n":
            pass
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not (snap / store.CHECKSUM).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 143
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "snapshot saved to" in err
    store.load(snap)  # whole and valid


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("missing", "no such directory"),
        ("truncated", "memory file is truncated"),
        ("corrupted", "does not match its checksum"),
        ("newer", "newer than this pyvmm reads"),
        ("other-cpu", "was taken on a"),
    ],
)
def test_cli_refuses_a_bad_snapshot_and_leaves_nothing(
    snapshot: tuple[Path, str], tmp_path: Path, damage: str, words: str
) -> None:
    path, _ = snapshot
    if damage == "missing":
        path = tmp_path / "nope"
    elif damage == "truncated":
        os.truncate(path / store.MEMORY, 1 << 20)
    elif damage == "corrupted":
        state = bytearray((path / store.STATE).read_bytes())
        state[len(state) // 2] ^= 0x20
        (path / store.STATE).write_bytes(bytes(state))
    elif damage == "newer":
        rewrite(path, {"version": 99})
    else:
        rewrite(path, {"host.vendor": "ImaginaryCPU"})
    log = tmp_path / "console.log"
    one_line_error(pyvmm("run", "--restore", path, "--console-log", log), words)
    assert not log.exists()


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--memory", "128M"], "has 64 MiB of memory, not 128 MiB"),
        (["--cpus", "2"], "has 1 vCPUs, not 2"),
        (["--kernel", "/bin/true"], "was taken with kernel"),
        (["--cmdline", "x"], "--restore resumes a saved guest"),
    ],
)
def test_cli_refuses_options_that_contradict_the_snapshot(
    snapshot: tuple[Path, str], option: list[str], words: str
) -> None:
    one_line_error(pyvmm("run", "--restore", snapshot[0], *option), words)


def test_snapshot_options_need_a_place(guests: Guests, tmp_path: Path) -> None:
    one_line_error(
        pyvmm("run", "--kernel", guests.elf, "--snapshot-after", "x"), "need --snapshot DIR"
    )
    (tmp_path / "there").mkdir()
    one_line_error(
        pyvmm("run", "--kernel", guests.elf, "--snapshot", tmp_path / "there"), "already exists"
    )


def test_restore_trace_shows_each_step(snapshot: tuple[Path, str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyvmm", "run", "--restore", str(snapshot[0]), "--trace", "boot"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    give_up = threading.Timer(120, proc.kill)
    give_up.start()
    try:
        # The restored guest counts forever: a count from it means the whole
        # restore has been traced; then it is stopped.
        assert proc.stdout is not None
        assert "count " in proc.stdout.readline() + proc.stdout.readline(), "no count after restore"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        give_up.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    titles = re.findall(r"^boot +\d+\. (.*)$", stderr, re.M)
    assert titles[0].startswith("read the snapshot")
    assert any(t.startswith("map 64 MiB of guest RAM") for t in titles)
    assert any(t.startswith("restore vCPU 0") for t in titles)
    assert titles[-1].startswith("set the KVM clock")
    assert "mmap of the snapshot's memory file, MAP_PRIVATE" in stderr
