#!/usr/bin/env bash
# The PyTorch suite and the benchmarks on a CUDA machine, in one go (docs/benchmarks.md, "CUDA").
#
#   bash benchmarks/cuda_check.sh OUT_DIR [TEST_SECONDS] [BENCH_SECONDS] [COMPILE_SECONDS]
#
# Runs from a scratch directory so that the installed package (with its plugins) is imported,
# never the checkout's source tree. Needs xai-toolbox installed (or on PYTHONPATH) with its test
# extra; TensorFlow is not needed. Each step has its own time limit, so a slow one cannot take
# the others' results with it. Writes OUT_DIR/results.tgz (env.txt, tests.log, junit.xml, and
# per benchmark step its log and bench-torch-<device>.json/.md) and copies the logs beside it.
# DEVICE=cpu runs the same steps on the CPU (to try the script on a machine without a GPU).
set -u
out=$(mkdir -p "$1" && realpath "$1")
test_s=${2:-240}
bench_s=${3:-170}
compile_s=${4:-80}
device=${DEVICE:-cuda}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
cd "$work" || exit 1
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$repo"  # the benchmarks package; xai_toolbox comes first

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, sys; print(sys.version); print('torch', torch.__version__, torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"
  python3 -c "import xai_toolbox, eagerpy; print('xai_toolbox from', xai_toolbox.__file__)"
  echo "cpus $(nproc)"
} >env.txt 2>&1

workers=$(( $(nproc) > 12 ? 12 : $(nproc) ))
timeout "$test_s" python3 -m pytest -v -rfE --durations=15 -p no:cacheprovider -n "$workers" --framework torch --device "$device" \
  --rootdir "$repo" -c "$repo/pyproject.toml" --junitxml junit.xml -o junit_family=xunit1 \
  "$repo/tests" >tests.log 2>&1
echo "pytest exit $?" >>tests.log

bench() {  # bench NAME SECONDS SECTIONS
  mkdir -p "$1"
  timeout "$2" python3 -m benchmarks --framework torch --device "$device" --quick --sections "$3" \
    --out "$1" >"$1/bench.log" 2>&1
  echo "benchmarks exit $?" >>"$1/bench.log"
}
bench main "$bench_s" overhead,naive,gradients,peers,precision
bench compile "$compile_s" compile
bench memory 60 memory

tar czf "$out/results.tgz" -- *
cp env.txt tests.log "$out/"
cp main/bench.log "$out/bench-main.log"
