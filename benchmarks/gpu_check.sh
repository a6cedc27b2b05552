#!/usr/bin/env bash
# Run the GPU check on a machine with an NVIDIA GPU, python3, numpy and torch (CUDA).
#   here:   python benchmarks/gpu_check.py prepare gpu_artifacts
#           pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#               --platform manylinux_2_28_x86_64 -d gpu_artifacts/wheels iree-base-runtime==3.13.0
#   there:  bash benchmarks/gpu_check.sh gpu_artifacts [TABLE.md]
#   here:   python benchmarks/gpu_check.py record TABLE.md      # into docs/targets.md
set -euo pipefail
dir=${1:?usage: gpu_check.sh ARTIFACT_DIR [TABLE.md]}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/msd-site "$dir"/wheels/*.whl
PYTHONPATH=/tmp/msd-site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 \
    timeout 540 python3 "$(dirname "$0")/gpu_check.py" run "$dir" ${2:+"$2"}
