#!/usr/bin/env bash
# What runs on a GPU machine, from the repository root: build with CUDA against the unpacked
# Debian tree in .deps, `vtl info`, the CUDA tests and the GPU benchmark (within 6 minutes on a
# 16-core machine); with DIAGNOSE=1, diagnostics after them (up to 2 x DIAGNOSE_LIMIT seconds);
# with VTL_GPU_SUITE=1, the CPU suite. Each step's output goes to $OUT/<step>.log; a failing
# step does not stop the next ones; a summary ends the run.
#   OUT=/tmp/out bash tests/gpu/run.sh
# TEST_FILE=tests/x.lua runs another test file in the CUDA step; TEST_LIMIT and BENCH_LIMIT
# (seconds) bound the test and benchmark steps; TESTS=0 or BENCH=0 leaves one out.
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
  echo "host: $(hostname), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1
  command -v nvcc && nvcc --version | tail -2
  ls -d /usr/local/cuda* 2>/dev/null
  gcc --version | head -1
  echo "python: $($VTL_PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.is_available())' 2>&1)"
  . tests/gpu/cuda_env.sh
} 2>&1 | tee "$OUT/machine.log"
# cuda_env.sh again in this shell, for CUDA_MAKE_ARGS and LD_LIBRARY_PATH (its output is logged above)
. tests/gpu/cuda_env.sh >/dev/null 2>&1

if [ -f .deps/unpack.sh ]; then
  step build 200 "bash .deps/unpack.sh >/dev/null && make -j$JOBS CUDA=1 $CUDA_MAKE_ARGS DEPS_ROOT=\$PWD/.deps/root all"
else
  step build 240 "echo 'no .deps/unpack.sh: building against the system libraries'; make -j$JOBS CUDA=1 $CUDA_MAKE_ARGS all"
fi
# where the binary takes its libraries from, and what it sees
step info 30 "ldd ./vtl | grep -E 'cuda|cublas|cudnn|lua|dnnl|openblas|not found'; readelf -d ./vtl | grep -iE 'rpath|runpath'; ./vtl info"
# TESTS=0 / BENCH=0 leave out the test or benchmark step (a run of diagnostics only)
if [ "${TESTS:-1}" = 1 ]; then
  step test_cuda "${TEST_LIMIT:-240}" "LIMIT=$(( ${TEST_LIMIT:-240} - 10 )) bash tests/gpu/test_cuda.sh ${TEST_FILE:-}"
fi
if [ "${BENCH:-1}" = 1 ]; then
  step bench "${BENCH_LIMIT:-240}" "VTL=./vtl LIMIT=$(( ${BENCH_LIMIT:-240} / 2 - 5 )) bash tests/bench/cuda.sh"
fi
# where the time goes: both profilers' tables of one step, then step phases and single layers
# against PyTorch
if [ "${DIAGNOSE:-0}" = 1 ]; then
  step diagnose "${DIAGNOSE_LIMIT:-200}" "for m in 'resnet50 256' 'vit_small_patch16_224 128'; do ./vtl tests/gpu/profile_step.lua \$m; \$VTL_PY tests/gpu/profile_step.py \$m; ./vtl tests/gpu/step_phases.lua \$m; \$VTL_PY tests/gpu/step_phases.py \$m; done"
  # inference eager and fused; ViT-S's phases with the fused attention kernels; ResNet-50's
  # phases with cuDNN's benchmark mode on both sides, and with its batch norms, ReLUs and sums
  # run one by one;
  # where batch-256 inference reaches its peak memory (graph and legacy API); gradients of a
  # model on both devices (planar and channels-last)
  step diagnose2 "${DIAGNOSE_LIMIT:-200}" "./vtl tests/gpu/infer_diag.lua; VTL_FLASH_ATTENTION=1 ./vtl tests/gpu/step_phases.lua vit_small_patch16_224 128; VTL_CUDNN_BENCHMARK=1 ./vtl tests/gpu/step_phases.lua resnet50 256; VTL_CUDNN_BENCHMARK=1 \$VTL_PY tests/gpu/step_phases.py resnet50 256; VTL_NORM_ACT=0 ./vtl tests/gpu/step_phases.lua resnet50 256; ./vtl tests/gpu/memory_diag.lua; VTL_CUDNN_GRAPH=0 ./vtl tests/gpu/memory_diag.lua; ./vtl tests/gpu/grad_diff.lua resnet18 16 64; ./vtl tests/gpu/grad_diff.lua resnet18 16 64 channels_last"
fi
# the CPU suite there needs the reference generators' Python packages; on request only
if [ "${VTL_GPU_SUITE:-0}" = 1 ]; then step cpu_suite 150 "VTL=./vtl bash tests/run.sh"; fi

echo
echo "=== summary ($(( $(date +%s) - t_start ))s in all; logs in $OUT)" | tee "$OUT/summary.log"
for i in "${!names[@]}"; do
  printf '%-10s %s\n' "${names[$i]}" "${results[$i]}" | tee -a "$OUT/summary.log"
done
grep -hE "^[0-9]+ passed, [0-9]+ failed, [0-9]+ crashed|^CRASH|^  FAIL|^CUDA CONTEXT" "$OUT/test_cuda.log" 2>/dev/null | sed 's/^/  /' | tee -a "$OUT/summary.log"
grep -h "^lua: " "$OUT/cpu_suite.log" 2>/dev/null | sed 's/^/  /' | tee -a "$OUT/summary.log"
