#!/usr/bin/env bash
# The multi-task merging benchmark: train a small network and eight task
# fine-tunes (bundled or generated data), merge them with fuse under each
# method, evaluate every merge on every task, and write the table into
# bench/multitask/README.md.
#
#   bench/multitask/run.sh [--seeds 0 1 2]
#
# Python: $MTBENCH_PYTHON if set, else the venv $MTBENCH_VENV
# (default bench/multitask/.venv), given torch (CPU), numpy, scikit-learn
# and safetensors if it lacks them. fuse: $FUSE if set, else a dev
# build (`cargo build`). Work files go to $MTBENCH_DIR (default /tmp/fuse-mtbench).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
if [ -n "${MTBENCH_PYTHON:-}" ]; then
  py=$MTBENCH_PYTHON
else
  venv=${MTBENCH_VENV:-$here/.venv}
  if ! "$venv/bin/python" -c 'import torch, sklearn, safetensors' 2>/dev/null; then
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    # The CPU-only wheel when its index is reachable, else PyPI's (with CUDA libraries).
    "$venv/bin/pip" install --quiet --index-url https://download.pytorch.org/whl/cpu torch ||
      "$venv/bin/pip" install --quiet torch
    "$venv/bin/pip" install --quiet numpy scikit-learn safetensors
  fi
  py=$venv/bin/python
fi
if [ -z "${FUSE:-}" ]; then
  cargo build --quiet
  FUSE=$PWD/target/debug/fuse
fi
exec "$py" "$here/mtbench.py" --fuse "$FUSE" --work "${MTBENCH_DIR:-/tmp/fuse-mtbench}" --readme "$here/README.md" "$@"
