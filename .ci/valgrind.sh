#!/usr/bin/env bash
# Runs loupe under valgrind memcheck (leaks, invalid reads/writes, use of
# uninitialised values) in a Debug build without sanitizers (build-vg):
#   bash .ci/valgrind.sh          a selection (a few minutes)
#   bash .ci/valgrind.sh --all    the whole test suite (much longer)
# The selection: the cmocka tests that load and tokenize real and broken
# files, and the CLI (`loupe run` on stories260K from GGUF, from a .loupe
# file written by quantize, and on the slm-gpt2-char HF directory; `loupe
# info`; `loupe tokenize`). --all: every cmocka test through ctest -T
# memcheck, and every script test with the programs it starts (loupe,
# quantize, tool_logits) wrapped in valgrind. Each run has a time limit
# (VG_TIMEOUT, default 900 s; script tests 4x). A run fails on any memcheck
# error or a definite/indirect leak (.ci/valgrind.supp lists the one known
# false positive). Exit status 1 if any run failed.
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

export LOUPE_SHARED=$SHARED LOUPE_SRC=$SRC LOUPE_BIN=$SRC/$B LOUPE_PYTHON=/usr/bin/python3
export LOUPE_TEST_TMP=$SRC/$B/test-tmp
mkdir -p "$LOUPE_TEST_TMP" $B/valgrind
pass=0 fail=0

# show_first_error LOG...: prints the first memcheck report and the test's
# own last lines, so a CI log says why a run failed without its artifacts.
show_first_error() {
  local log
  for log in "$@"; do
    grep -m1 -A14 -E "^==[0-9]+== (Invalid|Conditional|Use of|Syscall|Mismatched|Source and|Argument|[0-9,]+ .*(definitely|indirectly) lost)" \
      "$log" 2>/dev/null | sed 's/^/     | /' && break
  done
  local out=${1%.log}.out
  [ -f "$out" ] && tail -n 15 "$out" | sed 's/^/     > /'
}

# report NAME RC LOG...: counts a run as passed or failed from its exit
# status and its memcheck logs.
report() {
  local name=$1 rc=$2
  shift 2
  local errs leaks
  errs=$(cat "$@" 2>/dev/null | grep -E "ERROR SUMMARY: [1-9]" | wc -l)
  leaks=$(cat "$@" 2>/dev/null | grep -E "(definitely|indirectly) lost: [1-9]" | wc -l)
  if [ "$rc" -eq 0 ] && [ "$errs" -eq 0 ]; then
    echo "ok   $name ($# memcheck logs clean)"
    pass=$((pass + 1))
  else
    [ "$rc" -eq 124 ] && rc="timeout ${LIMIT}s"
    echo "FAIL $name (exit $rc; $errs processes with errors, $leaks with leaks; logs $*)"
    show_first_error "$@"
    fail=$((fail + 1))
  fi
}

if [ "${1:-}" = "--all" ]; then
  # cmocka tests: ctest's memcheck wraps each test executable.
  rm -f $B/Testing/Temporary/MemoryChecker.*.log
  ctest --test-dir $B -T memcheck -R '^test_' --timeout $((LIMIT * 4)) \
    --overwrite MemoryCheckCommand="$(command -v valgrind)" \
    --overwrite MemoryCheckCommandOptions="$(echo $VG_OPTS)" >$B/valgrind/ctest.log 2>&1
  for log in $B/Testing/Temporary/MemoryChecker.*.log; do
    name=$(grep -m1 -o "Command: .*" "$log" | sed 's|.*/||')
    rc=0
    grep -qE "MemCheck +#[0-9]+: $name .*Passed" $B/valgrind/ctest.log || rc=1
    report "$name" $rc "$log"
  done
  # Script tests: the programs they start run under memcheck through
  # wrappers (LOUPE_BIN points at them); one log per process. install_test
  # inspects the build directory itself and is left out.
  wrap=$SRC/$B/valgrind/bin
  mkdir -p "$wrap/tests"
  for prog in loupe quantize tests/tool_logits; do
    printf '#!/bin/sh\nexec valgrind %s --log-file=%s/%s.%%p.log %s "$@"\n' \
      "$(echo $VG_OPTS)" "$SRC/$B/valgrind/logs" "${prog##*/}" "$SRC/$B/$prog" >"$wrap/$prog"
    chmod +x "$wrap/$prog"
  done
  for t in tests/*_test.sh; do
    name=$(basename "$t" .sh)
    [ "$name" = install_test ] && continue
    rm -rf $B/valgrind/logs && mkdir -p $B/valgrind/logs
    LOUPE_BIN=$wrap timeout $((LIMIT * 4)) bash "$t" >"$B/valgrind/$name.out" 2>&1
    rc=$?
    mkdir -p "$B/valgrind/$name" && rm -f "$B/valgrind/$name"/*.log
    mv $B/valgrind/logs/*.log "$B/valgrind/$name/" 2>/dev/null
    report "$name" $rc "$B/valgrind/$name"/*.log
  done
  echo "valgrind: $pass passed, $fail failed"
  [ $fail -eq 0 ]
  exit
fi

# vg NAME CMD...: runs CMD under memcheck, log in build-vg/valgrind/NAME.log
vg() {
  local name=$1
  shift
  local log=$B/valgrind/$name.log
  timeout "$LIMIT" valgrind $VG_OPTS --log-file="$log" "$@" >"$B/valgrind/$name.out" 2>&1
  report "$name" $? "$log"
}

for t in test_fuzz_regress test_tokenizer test_loader test_sampler test_chat_template \
  test_quantize; do
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
vg tokenize $B/loupe tokenize -m "$SHARED/models/slm-gpt2-char" --json \
  <"$LOUPE_TEST_TMP/valgrind-text.txt"
rm -f "$loupe_file"

echo "valgrind: $pass passed, $fail failed"
[ $fail -eq 0 ]
