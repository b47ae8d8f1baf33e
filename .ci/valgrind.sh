#!/usr/bin/env bash
# Runs loupe under valgrind memcheck (leaks, invalid reads/writes, use of
# uninitialised values) in a Debug build without sanitizers (build-vg):
#   bash .ci/valgrind.sh          a selection (about 10-15 minutes)
#   bash .ci/valgrind.sh --all    every ctest test (ctest -T memcheck; long)
# The selection: the cmocka tests that load and tokenize real and broken
# files, and the CLI (`loupe run` on stories260K from GGUF, from a .loupe
# file written by quantize, and on the slm-gpt2-char HF directory; `loupe
# info`; `loupe tokenize`). Each run has a time limit (VG_TIMEOUT, default
# 900 s). A run fails on any memcheck error or a definite/indirect leak.
# Exit status 1 if any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
B=build-vg
SHARED=$(cd "$SRC/.." && pwd)/shared
LIMIT=${VG_TIMEOUT:-900}

command -v valgrind >/dev/null || LOUPE_WITH_FUZZ=1 bash tools/setup-deps.sh || exit 1
cmake -S . -B $B -DCMAKE_BUILD_TYPE=Debug -DLOUPE_SANITIZE=OFF >/dev/null || exit 1
cmake --build $B -j2 >/dev/null || { cmake --build $B -j1 2>&1 | grep -E "error" | head; exit 1; }

VG_OPTS="--leak-check=full --show-leak-kinds=definite,indirect,possible
  --errors-for-leak-kinds=definite,indirect --error-exitcode=1 --num-callers=30
  --track-origins=yes --suppressions=$SRC/.ci/valgrind.supp"

if [ "${1:-}" = "--all" ]; then
  # ctest's memcheck wraps every test command (script tests: only bash
  # itself is checked, not the programs they start).
  ctest --test-dir $B -T memcheck --timeout $((LIMIT * 4)) \
    --overwrite MemoryCheckCommand="$(command -v valgrind)" \
    --overwrite MemoryCheckCommandOptions="$(echo $VG_OPTS)" 2>&1 | tail -40
  echo "per-test logs: $B/Testing/Temporary/MemoryChecker.*.log"
  exit 0
fi

export LOUPE_SHARED=$SHARED LOUPE_SRC=$SRC LOUPE_BIN=$SRC/$B LOUPE_PYTHON=/usr/bin/python3
export LOUPE_TEST_TMP=$SRC/$B/test-tmp
mkdir -p "$LOUPE_TEST_TMP" $B/valgrind
pass=0 fail=0

# vg NAME CMD...: runs CMD under memcheck, log in build-vg/valgrind/NAME.log
vg() {
  local name=$1
  shift
  local log=$B/valgrind/$name.log
  timeout "$LIMIT" valgrind $VG_OPTS --log-file="$log" "$@" >"$B/valgrind/$name.out" 2>&1
  local rc=$?
  local summary
  summary=$(grep -E "ERROR SUMMARY|definitely lost|indirectly lost" "$log" | sed 's/^==[0-9]*== *//' | tr '\n' ' ')
  if [ $rc -eq 0 ]; then
    echo "ok   $name: $summary"
    pass=$((pass + 1))
  else
    [ $rc -eq 124 ] && summary="timed out after ${LIMIT}s; $summary"
    echo "FAIL $name (exit $rc): $summary (log $log)"
    fail=$((fail + 1))
  fi
}

for t in test_fuzz_regress test_tokenizer test_loader test_sampler test_chat_template test_quantize; do
  [ -x $B/tests/$t ] && vg "$t" $B/tests/$t
done

gguf=$SHARED/models/stories260K/stories260K.gguf
vg run-gguf $B/loupe run -m "$gguf" -p "Once upon a time" -n 40 --temp 0 -t 2
vg run-gguf-sampled $B/loupe run -m "$gguf" -p "The cat" -n 30 --temp 0.8 --top-p 0.9 \
  --seed 7 --num-return-sequences 2 -t 1
loupe_file=$LOUPE_TEST_TMP/valgrind-stories260K.loupe
vg quantize $B/quantize "$gguf" "$loupe_file" --type int8 --threads 2 --force
vg run-loupe $B/loupe run -m "$loupe_file" -p "Once upon a time" -n 30 --temp 0 -t 2
vg run-hf $B/loupe run -m "$SHARED/models/slm-gpt2-char" -p "The " -n 30 --temp 0 -t 2
vg info $B/loupe info -m "$gguf"
echo "Hello there, how are you?" >"$LOUPE_TEST_TMP/valgrind-text.txt"
vg tokenize $B/loupe tokenize -m "$SHARED/models/slm-gpt2-char" --json <"$LOUPE_TEST_TMP/valgrind-text.txt"
rm -f "$loupe_file"

echo "valgrind: $pass passed, $fail failed"
[ $fail -eq 0 ]
