#!/usr/bin/env bash
# What runs on a GPU machine, from the repository root: build with CUDA against the unpacked
# Debian tree in .deps, `vtl info`, the CUDA tests, the CPU suite, and the GPU benchmark.
# Each step's output goes to $OUT/<step>.log; a failing step does not stop the next ones;
# a summary ends the run. Meant to finish within 6 minutes on a 16-core machine.
#   OUT=/tmp/out bash tests/gpu/run.sh
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/vtl-gpu-out}
mkdir -p "$OUT"
JOBS=${JOBS:-$(nproc)}
export VTL_PY=${VTL_PY:-python3}
declare -a names results
t_start=$(date +%s)

# step NAME LIMIT_SECONDS COMMAND...: runs the command with a time limit, tee'd to $OUT/NAME.log
step() {
  local name=$1 limit=$2
  shift 2
  local t0 rc
  t0=$(date +%s)
  echo "=== $name: $*" | tee "$OUT/$name.log"
  timeout --kill-after=10 "$limit" bash -c "$*" 2>&1 | tee -a "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  local msg="rc=$rc, $(( $(date +%s) - t0 ))s"
  [ "$rc" = 124 ] && msg="$msg (time limit ${limit}s)"
  echo "=== $name: $msg" | tee -a "$OUT/$name.log"
  names+=("$name")
  results+=("$msg")
}

{
  echo "date: $(date -u)"
  echo "host: $(hostname), $(nproc) cores"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  command -v nvcc && nvcc --version | tail -2
  ls -d /usr/local/cuda* 2>/dev/null
  echo "python: $($VTL_PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())' 2>&1)"
} 2>&1 | tee "$OUT/machine.log"

if [ -x .deps/unpack.sh ] || [ -f .deps/unpack.sh ]; then
  step build 200 "bash .deps/unpack.sh >/dev/null && make -j$JOBS CUDA=1 DEPS_ROOT=\$PWD/.deps/root all"
else
  step build 240 "echo 'no .deps/unpack.sh: building against the system libraries'; make -j$JOBS CUDA=1 all"
fi
# where the binary takes its CUDA libraries from (rpath: CUDA_HOME/lib64)
step libs 20 "ldd ./vtl | grep -E 'cuda|cublas|cudnn|lua|dnnl|openblas|not found'; readelf -d ./vtl | grep -iE 'rpath|runpath'"
step info 20 "./vtl info"
step test_cuda 200 "./vtl tests/run.lua tests/test_cuda.lua"
step bench 240 "VTL=./vtl bash tests/bench/cuda.sh"
step grad_diff 60 "./vtl tests/gpu/grad_diff.lua resnet18 16 64; ./vtl tests/gpu/grad_diff.lua small_cnn 16 32"
# the CPU suite there needs the reference generators' Python packages; on request only
if [ "${VTL_GPU_SUITE:-0}" = 1 ]; then step cpu_suite 150 "VTL=./vtl bash tests/run.sh"; fi

echo
echo "=== summary ($(( $(date +%s) - t_start ))s in all; logs in $OUT)" | tee "$OUT/summary.log"
for i in "${!names[@]}"; do
  printf '%-10s %s\n' "${names[$i]}" "${results[$i]}" | tee -a "$OUT/summary.log"
done
grep -h "^lua: " "$OUT/test_cuda.log" "$OUT/cpu_suite.log" 2>/dev/null | sed 's/^/  /' | tee -a "$OUT/summary.log"
