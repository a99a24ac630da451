#!/usr/bin/env bash
# Create .venv (if needed) and install pyvmm into it, editable, with the test
# tools. Building compiles the KVM bindings from csrc/ with cffi and gcc.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
