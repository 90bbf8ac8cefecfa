#!/usr/bin/env bash
# Runs the whole suite with $VTL (default ./vtl): reference generators first (PyTorch/NumPy
# write inputs and expected outputs to build/fixtures), then every tests/test_*.lua.
set -u
cd "$(dirname "$0")/.."
export VTL=${VTL:-./vtl}
export VTL_FIXTURES=${VTL_FIXTURES:-$PWD/build/fixtures}
mkdir -p "$VTL_FIXTURES"
py=${VTL_PY:-.venv/bin/python} # VTL_PY: another Python with torch (GPU machines)
for g in tests/ref/gen_*.py; do
  [ -e "$g" ] || continue
  stamp="$VTL_FIXTURES/.$(basename "$g").stamp"
  if [ ! -f "$stamp" ] || [ "$g" -nt "$stamp" ] || [ tests/ref/reflib.py -nt "$stamp" ]; then
    "$py" "$g" "$VTL_FIXTURES" && touch "$stamp" || echo "reference generator $g failed"
  fi
done
exec "$VTL" tests/run.lua "$@"
