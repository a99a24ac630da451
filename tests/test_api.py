"""pyvmm.Machine with the fast test guest (KVM): waits, timeouts, endings."""

from __future__ import annotations

import time

import pytest

import pyvmm
from tests.guests.build import Guests

pytestmark = pytest.mark.usefixtures("kvm")


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
