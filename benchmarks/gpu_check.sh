#!/usr/bin/env bash
# CUDA against CPU on a bare GPU machine, in one run of at most 5 minutes.
#
#   bash benchmarks/gpu_check.sh PARTS_DIR [gpu_check.py options]
#
# PARTS_DIR is the folder that /work/shared/tools/ort-gpu/make-parts.sh writes: the
# parts of onnxruntime-gpu, unpack.sh, count.txt and wheels/ (the serving dependencies).
# Once every part has reached the machine (see that tool's README), unpack.sh unpacks
# onnxruntime-gpu into /tmp/ortgpu; this script then runs benchmarks/gpu_check.py with it
# and writes benchmarks/results/gpu_check.json and .md, copied to $OUT when that is set.
# PARTS_DIR "none" uses the onnxruntime already installed (on a CPU: the CPU comparison).
# The service also imports fastapi-offline, which make-parts.sh does not fetch: add it to
# the wheels before the first transfer (pip download --no-deps -d PARTS_DIR/wheels
# fastapi-offline), or the HTTP half is skipped and the results say why.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
parts=${1:?usage: gpu_check.sh PARTS_DIR|none [gpu_check.py options]}
shift
python=${PYTHON:-python3}
if [ "$parts" != none ]; then
  if [ ! -f /tmp/ortgpu/.complete ]; then
    bash "$parts/unpack.sh"
  fi
  if [ ! -f /tmp/ortgpu/.complete ]; then
    echo "onnxruntime-gpu is not unpacked yet: bring the remaining parts first" >&2
    exit 1
  fi
  export PYTHONPATH=/tmp/ortgpu:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
cd "$root"
"$python" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
status=0
timeout "${GPU_CHECK_TIMEOUT_S:-290}" "$python" benchmarks/gpu_check.py "$@" || status=$?
if [ -n "${OUT:-}" ]; then
  cp benchmarks/results/gpu_check.json benchmarks/results/gpu_check.md "$OUT"/ 2>/dev/null || true
fi
exit "$status"
