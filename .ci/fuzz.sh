#!/usr/bin/env bash
# Fuzzes loupe's file readers with libFuzzer (clang, ASan + UBSan):
#   bash .ci/fuzz.sh [TARGET...]
# Builds build-fuzz (-DLOUPE_FUZZ=ON), writes the seed corpora
# (tests/fuzz/make_seeds.py; .loupe seeds made by the quantize tool), checks
# that the model seeds load, then runs each target for FUZZ_SECONDS
# (default 45; 6 targets stay under 5 minutes). Corpora persist in
# build-fuzz/corpus/<target> so later runs start where earlier ones ended;
# crash inputs go to build-fuzz/crashes/. Exit status 1 if any target
# crashed (or a seed did not load).
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${FUZZ_SECONDS:-45}
B=build-fuzz
TARGETS=(fuzz_gguf fuzz_safetensors fuzz_loupe fuzz_config_json fuzz_tokenizer_json fuzz_tokenize)
[ $# -gt 0 ] && TARGETS=("$@")

if ! command -v clang >/dev/null ||
  ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a >/dev/null 2>&1; then
  LOUPE_WITH_FUZZ=1 bash tools/setup-deps.sh || exit 1
fi
CC=clang cmake -S . -B $B -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLOUPE_FUZZ=ON >/dev/null || exit 1
cmake --build $B -j2 --target "${TARGETS[@]}" quantize >/dev/null || {
  cmake --build $B -j1 --target "${TARGETS[@]}" quantize 2>&1 | grep -E "error" | head -20
  exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/loupe-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
export FZ_TMP=$work # the targets' scratch files
seeds=$work/seeds
/usr/bin/python3 tests/fuzz/make_seeds.py "$seeds" || exit 1
mkdir -p "$seeds/fuzz_loupe"
for src in llama-q8:int8 llama-q8:f16 gpt2-f32:f32; do
  $B/quantize "$seeds/fuzz_gguf/${src%%:*}.gguf" "$seeds/fuzz_loupe/${src%%:*}-${src##*:}.loupe" \
    --type "${src##*:}" --threads 1 --force >/dev/null 2>&1 ||
    { echo "quantize $src failed"; exit 1; }
done
# and an int8 file in the 1.0 format (row-major blocks, packed at load)
$B/quantize "$seeds/fuzz_gguf/llama-q8.gguf" "$seeds/fuzz_loupe/llama-q8-int8-v1.0.loupe" \
  --type int8 --format 1.0 --threads 1 --force >/dev/null 2>&1 ||
  { echo "quantize --format 1.0 failed"; exit 1; }

pass=0 fail=0
for t in fuzz_gguf fuzz_safetensors fuzz_loupe; do # model seeds must load fully
  [[ " ${TARGETS[*]} " == *" $t "* ]] || continue
  for f in "$seeds/$t"/*; do
    if ! FZ_EXPECT_LOAD=1 $B/tests/fuzz/$t "$f" >"$work/seedcheck.log" 2>&1; then
      echo "FAIL seed $f does not load:"; grep -E "invariant|ERROR" "$work/seedcheck.log"
      fail=$((fail + 1))
    fi
  done
done

mkdir -p $B/crashes
for t in "${TARGETS[@]}"; do
  mkdir -p $B/corpus/$t
  log=$B/crashes/$t.log
  dict=()
  case $t in fuzz_config_json | fuzz_tokenizer_json) dict=(-dict=tests/fuzz/json.dict) ;; esac
  $B/tests/fuzz/$t -max_total_time="$SECS" -timeout=20 -rss_limit_mb=2048 "${dict[@]}" \
    -print_final_stats=1 -artifact_prefix=$B/crashes/$t- \
    $B/corpus/$t "$seeds/$t" >"$log" 2>&1
  rc=$?
  stats=$(grep -E "^#[0-9]+.*DONE" "$log" | tail -1)
  if [ $rc -eq 0 ]; then
    echo "ok   $t: ${stats:-done}"
    pass=$((pass + 1))
  else
    echo "FAIL $t (exit $rc), log $log:"
    grep -E "ERROR|invariant|SUMMARY|Test unit written" "$log" | head -8
    fail=$((fail + 1))
  fi
done
echo "fuzz: $pass passed, $fail failed"
[ $fail -eq 0 ]
