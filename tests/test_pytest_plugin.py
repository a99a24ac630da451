"""The pytest plugin, run on a throwaway test file with the fast test guest (KVM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvmm.images.cache import cache_dir
from tests.guests.build import Guests

pytest_plugins = ["pytester"]
#: The image cache, read before pytester gives a test a HOME of its own.
IMAGES = cache_dir()
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


def test_xdist_workers_share_one_snapshot(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers each want a default guest at once: one boots it and
    snapshots it, the other waits on the lock, and both get clones of that
    one snapshot."""
    pytester.makepyfile(
        """
        import json

        def check(pyvmm_machine, pyvmm_snapshot, name):
            assert pyvmm_machine.run("echo up").output == "up\\n"
            created = json.loads((pyvmm_snapshot / "state.json").read_text())["created"]
            (pyvmm_snapshot.parent / f"{name}.seen").write_text(str(created))

        def test_one(pyvmm_machine, pyvmm_snapshot):
            check(pyvmm_machine, pyvmm_snapshot, "one")

        def test_two(pyvmm_machine, pyvmm_snapshot):
            check(pyvmm_machine, pyvmm_snapshot, "two")
        """
    )
    folder = tmp_path / "snapshots"
    # pytester gives the session a HOME of its own: keep the built images.
    monkeypatch.setenv("PYVMM_CACHE", str(IMAGES))
    result = pytester.runpytest_subprocess("-n", "2", f"--pyvmm-snapshots={folder}", timeout=1200)
    result.assert_outcomes(passed=2)
    snapshots = [p for p in folder.iterdir() if p.is_dir()]
    assert len(snapshots) == 1  # one boot, one snapshot
    assert (folder / "one.seen").read_text() == (folder / "two.seen").read_text()
