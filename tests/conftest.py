"""Shared fixtures: KVM availability and the test guests built with gcc."""

from __future__ import annotations

import os

import pytest

from tests.guests.build import Guests, build


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
