#!/usr/bin/env bash
# Runs tests/test_cuda.lua (or the file given) on a GPU machine so that one test cannot take the
# others down: when the process dies (a crash, a lost device context, the time limit), the next
# process starts at the test after the one that was running. Prints each test's result and wall
# time, then "N passed, N failed, N crashed".
#   LIMIT=seconds VTL=./vtl bash tests/gpu/test_cuda.sh [file]
set -u
cd "$(dirname "$0")/../.."
VTL=${VTL:-./vtl}
FILE=${1:-tests/test_cuda.lua}
LIMIT=${LIMIT:-240}
deadline=$((SECONDS + LIMIT))
part=$(mktemp)
all=$(mktemp)
from=1
crashed=0
while :; do
  left=$((deadline - SECONDS))
  if [ "$left" -le 2 ]; then echo "time limit (${LIMIT}s) reached before test $from"; break; fi
  VTL_TEST_FROM=$from VTL_TEST_VERBOSE=1 VTL_TEST_CHECK_CUDA=1 \
    timeout --kill-after=5 "$left" "$VTL" tests/run.lua "$FILE" >"$part" 2>&1
  rc=$?
  cat "$part"
  cat "$part" >>"$all"
  grep -q '^lua: ' "$part" && [ "$rc" != 3 ] && break
  last=$(grep -o '^START [0-9]*' "$part" | tail -1 | cut -d' ' -f2)
  if [ -z "$last" ]; then echo "the process ended (status $rc) before any test started"; break; fi
  name=$(grep "^START $last " "$part" | tail -1 | cut -d' ' -f3-)
  if [ "$rc" != 3 ]; then
    crashed=$((crashed + 1))
    echo "CRASH test $last ($name): the process ended with status $rc$([ "$rc" = 124 ] && echo ' (time limit)')"
  fi
  from=$((last + 1))
done
# the totals come from every process's per-test lines
skipped=$(grep -c '^SKIP ' "$all")
echo "$(grep -c '^  ok  ' "$all") passed, $(grep -c '^  FAIL' "$all") failed, $crashed crashed, $skipped skipped"
failed=$(grep -c '^  FAIL' "$all")
rm -f "$part" "$all"
[ "$failed" = 0 ] && [ "$crashed" = 0 ]
