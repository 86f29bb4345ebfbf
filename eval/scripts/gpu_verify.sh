#!/usr/bin/env bash
# One-shot GPU verification (issue 15, item 4): a thin wrapper over eval/scripts/gpu_verify.py, whose
# docstring lists the parts, their time caps and the workflow through the device tool.
#
#   eval/scripts/gpu_verify.sh [OUT_JSON] [--cifar DIR] [--budget S]   # default OUT_JSON: $OUT/verify.json
#   DATA=cifar10.zip eval/scripts/gpu_verify.sh $OUT/verify.json      # unzip a CIFAR-10 JPEG zip first
#   DRY_RUN=1 eval/scripts/gpu_verify.sh /tmp/verify.json              # CPU dry run, tiny sizes (CI's test)
#
# On the device tool, one call (carry: [".whl", ".gpu"], timeout_s: 560), from the repository root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:$PWD DATA=.gpu/cifar10.zip eval/scripts/gpu_verify.sh $OUT/verify.json
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
args=()
if [[ -n "${DATA:-}" ]]; then  # a zip in ImageFolder layout (train/, test/), e.g. the CIFAR-10 JPEG copy
    dir=${TMPDIR:-/tmp}/gpu-verify-data
    rm -rf "$dir" && mkdir -p "$dir"
    "$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$DATA" "$dir"
    root=$(dirname "$(find "$dir" -maxdepth 3 -type d -name train | head -n 1)")
    args+=(--cifar "$root")
fi
exec "$PY" eval/scripts/gpu_verify.py "${args[@]}" "$@"
