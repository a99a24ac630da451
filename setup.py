"""Only here because cffi's ``cffi_modules`` keyword has no pyproject form."""

from setuptools import setup

setup(cffi_modules=["csrc/build_kvm.py:ffibuilder"])
