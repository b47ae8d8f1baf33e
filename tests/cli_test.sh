#!/usr/bin/env bash
# cli_test.sh — drives the built `loupe` binary on the shared fixtures:
# usage and library errors (exit codes, messages), greedy output against
# llama2.c's golden text, seeds, sequences, stop strings, lengths and the
# tokenizer. Env: LOUPE_BIN (build dir), LOUPE_SHARED (fixtures dir).
set -u

BIN="${LOUPE_BIN:?set LOUPE_BIN to the build directory}/loupe"
SHARED="${LOUPE_SHARED:?set LOUPE_SHARED to the shared directory}"
PY="${LOUPE_PYTHON:-python3}"
STORIES="$SHARED/models/stories260K/stories260K.gguf"
GREEDY="$SHARED/models/stories260K/greedy-from-bos.txt"
CHAR="$SHARED/models/slm-gpt2-char"

TMP=$(mktemp -d "${LOUPE_TEST_TMP:-/tmp}/cli_test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

pass=0
fail=0

ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() {
    fail=$((fail + 1))
    echo "FAIL $1"
    shift
    for line in "$@"; do echo "     $line"; done
}

# run ARGS...: runs loupe; stdout in $TMP/out, stderr in $TMP/err, $rc.
run() {
    "$BIN" "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
    rc=$?
}
# run_in TEXT ARGS...: the same with TEXT on stdin (no added newline).
run_in() {
    local text=$1
    shift
    printf '%s' "$text" | "$BIN" "$@" >"$TMP/out" 2>"$TMP/err"
    rc=$?
}

# expect NAME RC REGEX: the last run exited RC and stderr matches REGEX.
expect() {
    local name=$1 want=$2 re=$3
    if [ "$rc" -ne "$want" ]; then
        bad "$name" "exit $rc, expected $want" "stderr: $(head -c 400 "$TMP/err")"
    elif ! grep -Eq -- "$re" "$TMP/err"; then
        bad "$name" "stderr does not match /$re/:" "$(head -c 400 "$TMP/err")"
    else
        ok "$name"
    fi
}

[ -x "$BIN" ] || { echo "no binary at $BIN"; echo "0 passed, 1 failed"; exit 1; }

# --------------------------------------------------------------- basics
run --help
[ "$rc" -eq 0 ] && grep -q "run" "$TMP/out" && ok "--help" || bad "--help" "exit $rc"
run --version
[ "$rc" -eq 0 ] && grep -Eq '^loupe [0-9]+\.[0-9]+\.[0-9]+' "$TMP/out" \
    && ok "--version" || bad "--version" "exit $rc: $(cat "$TMP/out")"
run run --help
[ "$rc" -eq 0 ] && grep -q -- "--temp" "$TMP/out" && grep -q "default 0.8" "$TMP/out" \
    && ok "run --help documents the default temperature" || bad "run --help" "exit $rc"
run
expect "no command: usage error" 2 "usage"

# ------------------------------------------------------- usage errors (2)
run frobnicate
expect "unknown subcommand" 2 "unknown command 'frobnicate'"
run run -m "$STORIES" --bogus
expect "unknown flag" 2 "unknown option '--bogus'"
run run -m "$STORIES" -n
expect "missing value" 2 "-n needs a value"
run run -m "$STORIES" --temp abc
expect "non-numeric temperature" 2 "--temp expects a number, got 'abc'"
run run -m "$STORIES" -n 12x
expect "trailing junk in an integer" 2 "-n expects an integer"
run run -m "$STORIES" --temp -0.5
expect "negative temperature" 2 "--temp must be >= 0"
run run -m "$STORIES" --top-p 1.5
expect "top-p above 1" 2 "--top-p must be in \(0, 1\]"
run run -m "$STORIES" --top-p 0
expect "top-p of 0" 2 "--top-p must be in \(0, 1\]"
run run -m "$STORIES" -c 0
expect "context of 0" 2 "-c must be >= 1"
run run -m "$STORIES" -t 0
expect "zero threads" 2 "-t must be in"
run run -m "$STORIES" --seed -3
expect "negative seed" 2 "--seed expects a non-negative integer"
run run -p hello
expect "no model" 2 "no model given"
run run -m "$STORIES" -p a -f b
expect "-p and -f together" 2 "not both"
run run -m "$STORIES" --ignore-eos=1
expect "value on a flag" 2 "takes no value"
run tokenize --json --nope
expect "tokenize: unknown flag" 2 "unknown option '--nope'"

# --------------------------------------------------- library errors (1)
run run -m "$TMP/missing.gguf" -p hi
expect "missing model file" 1 "^loupe: error: .*missing\.gguf"
run info "$TMP/missing.gguf"
expect "info: missing model file" 1 "^loupe: error: "
long=$(printf 'the cat sat on the mat %.0s' $(seq 1 20))
run run -m "$STORIES" -c 8 -p "$long" -n 4
expect "prompt longer than the context" 1 "^loupe: error: .*context.*"
grep -q " 8 " "$TMP/err" && grep -Eq "[0-9]{2,} tokens" "$TMP/err" \
    && ok "context message gives both numbers" || bad "context message gives both numbers" "$(cat "$TMP/err")"
[ -s "$TMP/out" ] && bad "nothing on stdout after a context error" "$(cat "$TMP/out")" \
    || ok "nothing on stdout after a context error"
run run -m "$STORIES" --isa bogus -p hi -n 1
expect "unknown ISA" 1 "^loupe: error: .*bogus"
LOUPE_ISA=bogus "$BIN" run -m "$STORIES" -p hi -n 1 >"$TMP/out" 2>"$TMP/err" </dev/null
rc=$?
expect "unknown ISA from LOUPE_ISA" 1 "^loupe: error: .*bogus"
run run -m "$CHAR" -n 3
expect "empty prompt without BOS" 1 "^loupe: error: .*empty"

# ----------------------------------------------------------- generation
run run -m "$STORIES" --temp 0 -n 20
if [ "$rc" -ne 0 ]; then
    bad "greedy from BOS" "exit $rc: $(head -c 400 "$TMP/err")"
else
    n=$(wc -c <"$TMP/out")
    if [ "$n" -ge 40 ] && cmp -s -n "$n" "$TMP/out" "$GREEDY"; then
        ok "greedy from BOS matches llama2.c's text ($n bytes)"
    else
        bad "greedy from BOS" "got: $(cat "$TMP/out")" "want prefix of: $(head -c 120 "$GREEDY")"
    fi
    grep -q "generated tokens: 20" "$TMP/err" && grep -q "prompt tokens: 1" "$TMP/err" \
        && grep -q "finish: length" "$TMP/err" && grep -q "tok/s" "$TMP/err" \
        && ok "statistics on stderr" || bad "statistics on stderr" "$(cat "$TMP/err")"
fi

run run -m "$STORIES" --temp 0 -n 30 -p "Once upon a time"
[ "$rc" -eq 0 ] && [ "$(head -c 16 "$TMP/out")" = "Once upon a time" ] && [ "$(wc -c <"$TMP/out")" -gt 16 ] \
    && ok "stdout starts with the prompt text" || bad "prompt echo" "$(cat "$TMP/out")"

run run -m "$STORIES" --temp 0.8 --seed 42 -n 40
cp "$TMP/out" "$TMP/s42a"
run run -m "$STORIES" --temp 0.8 --seed 42 -n 40
cp "$TMP/out" "$TMP/s42b"
run run -m "$STORIES" --temp 0.8 --seed 43 -n 40
cp "$TMP/out" "$TMP/s43"
if [ -s "$TMP/s42a" ] && cmp -s "$TMP/s42a" "$TMP/s42b"; then
    ok "same seed, same output"
else
    bad "same seed, same output" "$(cat "$TMP/s42a")" "$(cat "$TMP/s42b")"
fi
cmp -s "$TMP/s42a" "$TMP/s43" && bad "different seeds differ" "$(cat "$TMP/s43")" \
    || ok "different seeds differ"

run run -m "$STORIES" --temp 0.8 --seed 7 -n 15 --num-return-sequences 3
seps=$(grep -c '^--- sequence [0-9]* ---$' "$TMP/out")
if [ "$rc" -eq 0 ] && [ "$seps" -eq 3 ] && grep -q '^--- sequence 1 ---$' "$TMP/out" \
    && grep -q '^--- sequence 3 ---$' "$TMP/out"; then
    ok "--num-return-sequences 3 prints 3 separators"
else
    bad "--num-return-sequences 3" "exit $rc, $seps separators" "$(cat "$TMP/out")"
fi
# sequence 1 of a run with seed 7 is the single run with seed 7; sequence 2 is seed 8
run run -m "$STORIES" --temp 0.8 --seed 8 -n 15
cp "$TMP/out" "$TMP/seed8"
run run -m "$STORIES" --temp 0.8 --seed 7 -n 15 --num-return-sequences 3
awk '/^--- sequence 2 ---$/{on=1;next} /^--- sequence 3 ---$/{on=0} on' "$TMP/out" >"$TMP/seq2"
printf '%s' "$(cat "$TMP/seq2")" >"$TMP/seq2t"
printf '%s' "$(cat "$TMP/seed8")" >"$TMP/seed8t"
cmp -s "$TMP/seq2t" "$TMP/seed8t" && ok "sequence i uses seed + i - 1" \
    || bad "sequence i uses seed + i - 1" "$(cat "$TMP/seq2t")" "$(cat "$TMP/seed8t")"

# stop strings: the greedy text up to (not including) the stop string
want=$("$PY" -c 'import sys; t=open(sys.argv[1]).read(); print(t[:t.index(sys.argv[2])], end="")' "$GREEDY" "Lily")
run run -m "$STORIES" --temp 0 -n 60 --stop "Lily"
if [ "$rc" -eq 0 ] && [ "$(cat "$TMP/out")" = "$want" ] && [ "$(wc -c <"$TMP/out")" -eq "${#want}" ] \
    && grep -q "finish: stop" "$TMP/err"; then
    ok "stop string removed, finish stop"
else
    bad "stop string" "got: [$(cat "$TMP/out")]" "want: [$want]"
fi
run run -m "$STORIES" --temp 0 -n 60 --stop "zzz" --stop "time, there"
[ "$rc" -eq 0 ] && [ "$(cat "$TMP/out")" = "Once upon a " ] \
    && ok "stop string spanning tokens" || bad "stop string spanning tokens" "got: [$(cat "$TMP/out")]"

# lengths
run run -m "$STORIES" --temp 0 --max-length 6
grep -q "generated tokens: 5" "$TMP/err" && ok "--max-length counts the prompt (BOS)" \
    || bad "--max-length" "$(cat "$TMP/err")"
run run -m "$STORIES" --temp 0 -c 10 -n 100
[ "$rc" -eq 0 ] && grep -q "finish: length" "$TMP/err" && grep -q "generated tokens: 10" "$TMP/err" \
    && ok "end of context: finish length, not an error" || bad "end of context" "exit $rc: $(cat "$TMP/err")"

# ------------------------------------------------------------- tokenize
want_ids=$("$PY" -c 'import json,sys; c=json.load(open(sys.argv[1]))["cases"][0]; print(" ".join(map(str,c["prompt_ids"]))); open(sys.argv[2],"w").write(c["prompt"])' \
    "$CHAR/greedy.json" "$TMP/prompt")
"$BIN" tokenize -m "$CHAR" <"$TMP/prompt" >"$TMP/out" 2>"$TMP/err"
rc=$?
[ "$rc" -eq 0 ] && [ "$(cat "$TMP/out")" = "$want_ids" ] && ok "tokenize: reference ids" \
    || bad "tokenize: reference ids" "got:  $(cat "$TMP/out") $(cat "$TMP/err")" "want: $want_ids"
"$BIN" tokenize -m "$CHAR" --json <"$TMP/prompt" >"$TMP/out" 2>"$TMP/err"
"$PY" - "$TMP/out" "$want_ids" <<'EOF' && ok "tokenize --json" || bad "tokenize --json" "$(cat "$TMP/out")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["ids"] == [int(x) for x in sys.argv[2].split()], d["ids"]
assert len(d["tokens"]) == len(d["ids"]) and d["tokens"][0] == "Q" and d["tokens"][2] == "\u0120"
EOF
run_in "Hello world" tokenize -m "$STORIES"
with=$(cat "$TMP/out")
run_in "Hello world" tokenize -m "$STORIES" --no-special
without=$(cat "$TMP/out")
[ "$with" = "1 $without" ] && [ -n "$without" ] && ok "tokenize adds BOS; --no-special does not" \
    || bad "tokenize BOS" "default: $with" "--no-special: $without"

# ----------------------------------------------------------------- info
run info "$STORIES"
[ "$rc" -eq 0 ] && [ -s "$TMP/out" ] && ok "info prints a report" || bad "info" "exit $rc $(cat "$TMP/err")"

# ---------------------------------------------------------------- bench
# -d: tests run with that many tokens already in the cache; the depth counts
# toward the context (stories260K: 2048), and --json reports n_depth.
run bench -m "$STORIES" -p 4 -n 8 -d 0,16 -t 1 -r 1 --json
"$PY" - "$TMP/out" <<'EOF' && ok "bench -d: n_depth and tests in --json" || bad "bench -d --json" "exit $rc" "$(cat "$TMP/out" "$TMP/err")"
import json, sys
d = json.load(open(sys.argv[1]))
got = [(r["n_prompt"], r["n_gen"], r["n_depth"], r["n_threads"]) for r in d]
assert got == [(4, 0, 0, 1), (0, 8, 0, 1), (4, 0, 16, 1), (0, 8, 16, 1)], got
assert all(r["avg_ts"] > 0 and len(r["samples_ns"]) == 1 for r in d)
EOF
run bench -m "$STORIES" -p 0 -n 8 -d 2041 -t 1 -r 1
[ "$rc" -eq 1 ] && grep -q "test of 8 tokens at depth 2041 exceeds the model's context of 2048" "$TMP/err" \
    && ok "bench -d beyond the context: error" || bad "bench -d beyond context" "exit $rc" "$(cat "$TMP/err")"
run bench -m "$STORIES" -d 1,x
[ "$rc" -eq 2 ] && grep -q -- "-d: expected" "$TMP/err" && ok "bench -d malformed: usage error" \
    || bad "bench -d malformed" "exit $rc" "$(cat "$TMP/err")"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
