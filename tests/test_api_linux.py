"""pyvmm.Machine with the default Linux guest (KVM): run(), statuses,
timeouts, files copied into the guest, two guests at once. Both are clones
of the cached snapshot (pyvmm_snapshot), shared by every test here."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyvmm

pytestmark = pytest.mark.hwkvm


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("shipped")
    script = d / "hello.sh"
    script.write_text('#!/bin/sh\necho "hello from $0 with $#"\n')
    script.chmod(0o750)
    data = d / "data.bin"
    data.write_bytes(bytes(range(256)) * 40)
    data.chmod(0o600)
    return {"script": script, "data": data}


@pytest.fixture(scope="module")
def machines(
    kvm: None, shipped: dict[str, Path], pyvmm_snapshot: Path
) -> Iterator[tuple[pyvmm.Machine, pyvmm.Machine]]:
    first = pyvmm.Machine(
        restore=pyvmm_snapshot,
        extra_files={shipped["script"]: "/opt/t/hello.sh", shipped["data"]: "/data.bin"},
    )
    second = pyvmm.Machine(restore=pyvmm_snapshot)
    with first, second:
        first.start()
        second.start()
        second.run("echo second > /tmp/who")
        yield first, second


def test_run_returns_output_and_status(machines: tuple[pyvmm.Machine, pyvmm.Machine]) -> None:
    vm = machines[0]
    r = vm.run("echo one; echo two", timeout=120)
    assert (r.output, r.status) == ("one\ntwo\n", 0)
    assert r.duration > 0
    assert vm.run("exit_with() { return $1; }; exit_with 3", timeout=120).status == 3
    assert vm.run("false", timeout=120).status == 1
    assert vm.run("printf no-newline", timeout=120).output == "no-newline"
    # In the background: returns at once, the job goes on, and its end
    # while the shell waits for a command does not end the shell.
    assert vm.run("(sleep 1; echo later > /tmp/bg) &", timeout=120).status == 0
    assert vm.run("test -e /tmp/bg", timeout=120).status == 1
    time.sleep(3)
    assert vm.run("cat /tmp/bg", timeout=120).output == "later\n"


def test_files_arrive_with_content_and_mode(
    machines: tuple[pyvmm.Machine, pyvmm.Machine], shipped: dict[str, Path]
) -> None:
    vm = machines[0]
    r = vm.run("stat -c '%a %s' /opt/t/hello.sh /data.bin; md5sum /data.bin", timeout=120)
    want = hashlib.md5(shipped["data"].read_bytes()).hexdigest()
    size = shipped["script"].stat().st_size
    assert r.output.splitlines() == [f"750 {size}", "600 10240", f"{want}  /data.bin"]
    assert (
        vm.run("/opt/t/hello.sh a b", timeout=120).output == "hello from /opt/t/hello.sh with 2\n"
    )


def test_two_guests_side_by_side(machines: tuple[pyvmm.Machine, pyvmm.Machine]) -> None:
    first, second = machines
    assert second.run("cat /tmp/who", timeout=120).output == "second\n"
    assert first.run("cat /tmp/who", timeout=120).status == 1  # only the second wrote it
    assert second.run("test -e /data.bin", timeout=120).status == 1  # only the first has it


def test_timeout_raises_with_the_console_and_the_guest_goes_on(
    machines: tuple[pyvmm.Machine, pyvmm.Machine],
) -> None:
    vm = machines[1]
    with pytest.raises(pyvmm.GuestTimeout, match="last console lines"):
        vm.run("sleep 8", timeout=2)
    assert vm.run("echo after", timeout=120).output == "after\n"  # queued behind the sleep


def test_shutdown_powers_off(machines: tuple[pyvmm.Machine, pyvmm.Machine]) -> None:
    for vm in machines:
        assert vm.shutdown(timeout=300) == 0
        assert vm.exit_status == 0
