"""The pytest plugin, run on a throwaway test file with the fast test guest (KVM)."""

from __future__ import annotations

import pytest

from tests.guests.build import Guests

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("kvm")


def test_factory_options_and_console_in_failure_report(
    pytester: pytest.Pytester, guests: Guests
) -> None:
    pytester.makepyfile(
        """
        def test_boots(pyvmm_factory, pytestconfig):
            vm = pyvmm_factory(cmdline="action=wait").start()
            vm.wait_for("waiting", timeout=30)
            assert pytestconfig.option.pyvmm_memory == "64M"

        def test_fails_with_console(pyvmm_factory):
            vm = pyvmm_factory(cmdline="plugin-marker action=wait").start()
            vm.wait_for("waiting", timeout=30)
            assert False, "on purpose"
        """
    )
    result = pytester.runpytest_subprocess(
        f"--pyvmm-kernel={guests.elf}",
        "--pyvmm-memory=64M",  # the plugin loads by entry point
    )
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "pyvmm console 0" in out
    assert "cmdline: plugin-marker action=wait" in out
