"""pyvmm.Machine with the fast test guest (KVM): waits, timeouts, endings."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pyvmm
from pyvmm.api import ConsoleText
from pyvmm.errors import UserError
from tests.guests.build import Guests

pytestmark = [pytest.mark.usefixtures("kvm"), pytest.mark.hwkvm]


def test_wait_for_returns_the_match_and_times_out_with_the_console(guests: Guests) -> None:
    with pyvmm.Machine(kernel=guests.elf, memory="64M", cmdline="action=wait") as vm:
        vm.start()
        m = vm.wait_for(r"^cmdline: (.*)\n", timeout=30)  # \n: the whole line is there
        assert "action=wait" in m.group(1)
        vm.wait_for("waiting", timeout=30)
        started = time.monotonic()
        with pytest.raises(pyvmm.GuestTimeout) as e:
            vm.wait_for("never printed", timeout=1)
        assert time.monotonic() - started < 10
        assert "waiting" in str(e.value)  # the last console lines come with it
        assert vm.exit_status is None  # still running
    assert vm.exit_status is not None  # closing stopped it


def test_exit_status_and_waiting_on_an_ended_guest(guests: Guests) -> None:
    with pyvmm.Machine(kernel=guests.elf, memory="64M") as vm:
        vm.start()
        assert vm.wait(timeout=30) == 0  # the test guest resets the machine
        assert vm.exit_status == 0
        assert vm.console.endswith("reset\n")
        with pytest.raises(pyvmm.GuestExited, match="guest reset"):
            vm.wait_for("never printed", timeout=5)


def test_two_machines_in_one_process(guests: Guests) -> None:
    with (
        pyvmm.Machine(kernel=guests.elf, memory="64M", cmdline="one action=wait") as a,
        pyvmm.Machine(kernel=guests.elf, memory="64M", cmdline="two action=wait") as b,
    ):
        a.start()
        b.start()
        a.wait_for("waiting", timeout=30)
        b.wait_for("waiting", timeout=30)
        assert "cmdline: one" in a.console and "cmdline: two" not in a.console
        assert "cmdline: two" in b.console and "cmdline: one" not in b.console


def test_console_log_gets_the_output_and_a_bad_path_is_a_user_error(
    guests: Guests, tmp_path: Path
) -> None:
    log = tmp_path / "console.log"
    with pyvmm.Machine(kernel=guests.elf, memory="64M", console_log=log) as vm:
        vm.start()
        assert vm.wait(timeout=30) == 0
    assert log.read_bytes().decode().replace("\r\n", "\n") == vm.console

    fds = set(os.listdir("/proc/self/fd"))
    bad = pyvmm.Machine(kernel=guests.elf, memory="64M", console_log=tmp_path / "no" / "log")
    with pytest.raises(UserError, match=r"cannot write the console to .*no/log"):
        bad.start()
    assert set(os.listdir("/proc/self/fd")) == fds  # the VM built before the log is gone too


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=20))
def test_console_text_built_piece_by_piece(data: bytes, cuts: list[int]) -> None:
    """However the UART's bytes are split up, the console text is the whole
    output decoded at once with CR LF as LF (a CR at the very end waits to
    see whether LF follows)."""
    text = ConsoleText()
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for a, b in itertools.pairwise(points):
        text.add(data[a:b])
        assert text.length == len(text.text())
    whole = data.decode(errors="replace").replace("\r\n", "\n")
    got = text.text()
    if data.endswith(b"\n"):
        assert got == whole
    else:
        # Held back at most: a CR, and the start of a character still arriving.
        assert whole.startswith(got) and len(whole) - len(got) <= 2
