#!/usr/bin/env bash
# Self-checks of the independent PyTorch reference (tests/ref/t5gemma_ref.py): safetensors I/O,
# elementary math vs torch built-ins, float64 gradients vs finite differences (gradcheck),
# masking/padding/window/causality invariances, and the random/dump/check/bench command line.
# Prints "PASS ref_<name>" / "FAIL ref_<name>: why". Needs Debian's python3-torch (/usr/bin/python3).
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
if ! "$PY" -c 'import torch, numpy' 2>/dev/null; then
  echo "FAIL ref_selfcheck: $PY cannot import torch and numpy (Debian packages python3-torch, python3-numpy)"
  exit 1
fi
OMP_NUM_THREADS=1 exec "$PY" tests/ref/selftest.py "$@"
