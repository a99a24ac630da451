"""Pause and resume with the counting test guest (KVM): a paused guest does
nothing, a resumed one goes on from where it was, and nothing leaks."""

from __future__ import annotations

import os
import re
import threading
import time

import pytest

import pyvmm
from tests.guests.build import Guests

pytestmark = [pytest.mark.usefixtures("kvm"), pytest.mark.hwkvm]


def numbers(console: str) -> list[int]:
    """The counts of every complete "count N" line."""
    return [int(n) for n in re.findall(r"^count (\d+)\n", console, re.M)]


def test_paused_guest_prints_nothing_and_resumes_where_it_was(guests: Guests) -> None:
    with pyvmm.Machine(kernel=guests.elf, memory="64M", cmdline="action=count") as m:
        m.start()
        m.wait_for(r"^count 20\n", timeout=60)
        m.pause()
        paused = m.console
        time.sleep(2)
        assert m.console == paused  # nothing at all while paused
        assert m.exit_status is None
        m.resume()
        last = numbers(paused)[-1]
        m.wait_for(rf"^count {last + 20}\n", timeout=60)
        seen = numbers(m.console)
    assert seen == list(range(1, len(seen) + 1))  # none lost, none repeated


def test_a_hundred_pauses_leave_nothing_behind(guests: Guests) -> None:
    with pyvmm.Machine(kernel=guests.elf, memory="64M", cmdline="action=count") as m:
        m.start()
        m.wait_for(r"^count 5\n", timeout=60)
        m.pause()
        m.resume()  # warm up
        fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
        for _ in range(100):
            m.pause()
            m.resume()
        assert (len(os.listdir("/proc/self/fd")), threading.active_count()) == (fds, threads)
        last = numbers(m.console)[-1]
        m.wait_for(rf"^count {last + 5}\n", timeout=60)  # still running
        seen = numbers(m.console)
    assert seen == list(range(1, len(seen) + 1))


def test_a_paused_guest_can_be_closed(guests: Guests) -> None:
    m = pyvmm.Machine(kernel=guests.elf, memory="64M", cmdline="action=count")
    m.start()
    m.wait_for(r"^count 3\n", timeout=60)
    m.pause()
    m.close()
    assert m.exit_status is not None


def test_close_from_two_threads_at_once(guests: Guests) -> None:
    """close() is idempotent and safe from several threads: every descriptor
    is closed exactly once (a double close would hit another machine's)."""
    other = pyvmm.Machine(kernel=guests.elf, memory="64M", cmdline="action=count")
    other.start()
    try:
        for _ in range(10):
            m = pyvmm.Machine(kernel=guests.elf, memory="64M", cmdline="action=count")
            m.start()
            closers = [threading.Thread(target=m.close) for _ in range(4)]
            for t in closers:
                t.start()
            for t in closers:
                t.join()
            assert m.exit_status is not None
        last = numbers(other.console)[-1]
        other.wait_for(rf"^count {last + 3}\n", timeout=60)  # the other machine is unhurt
        assert other.exit_status is None
    finally:
        other.close()
