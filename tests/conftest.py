"""Shared fixtures: KVM availability and the test guests built with gcc."""

from __future__ import annotations

import os

import pytest

from tests.guests.build import Guests, build

#: Under scripts/nested-kvm.sh, a new L1 goes on where a hung one left off.
pytest_plugins = ["tests.rig_progress"]


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


@pytest.fixture(scope="session")
def kvm() -> None:
    """Skip a test that needs KVM where there is none; CI sets
    PYVMM_REQUIRE_KVM=1 so that a missing /dev/kvm fails instead."""
    if kvm_usable():
        return
    if os.environ.get("PYVMM_REQUIRE_KVM") == "1":
        pytest.fail("PYVMM_REQUIRE_KVM=1 but /dev/kvm cannot be opened for reading and writing")
    pytest.skip("/dev/kvm is not available")


@pytest.fixture(scope="session")
def guests(tmp_path_factory: pytest.TempPathFactory) -> Guests:
    return build(tmp_path_factory.mktemp("guests"))


def rig_qemu() -> tuple[int, ...] | None:
    """QEMU's version when these tests run under scripts/nested-kvm.sh."""
    version = os.environ.get("PYVMM_RIG_QEMU", "")
    try:
        return tuple(int(part) for part in version.split(".")) if version else None
    except ValueError:
        return None


#: QEMU 7.2's SVM emulation does not pass an L2 guest's XSETBV on to L1's
#: KVM: under scripts/nested-kvm.sh with that QEMU and a CPU given XSAVE
#: (its default CPU has none, for this reason), a guest that enables XSAVE
#: components itself never gets them. Not pyvmm's doing, and only there.
xsetbv_defect = pytest.mark.xfail(
    condition=(rig_qemu() or (0,))[:2] == (7, 2),
    reason="QEMU 7.2 does not pass the guest's XSETBV to L1's KVM (the rig's defect)",
)
