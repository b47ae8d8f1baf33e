#!/bin/bash
# quantize_test.sh — the quantize tool's command line: exit codes (0 / 1
# error / 2 usage), refusals, --verify, progress and notes on a non-TTY,
# deterministic output, and that a run killed with SIGKILL at any moment
# leaves either no DST or a complete, valid one (and no temp file).
set -u
BIN=${LOUPE_BIN:?}/quantize
SRC=${LOUPE_SHARED:?}/models/stories260K/stories260K.gguf
T=${LOUPE_TEST_TMP:?}/quantize_sh
rm -rf "$T"
mkdir -p "$T"

fail() {
    echo "FAIL: $*"
    exit 1
}

# expect STATUS CMD...: runs CMD (stdout -> $T/out, stderr -> $T/err)
expect() {
    local want=$1
    shift
    "$@" >"$T/out" 2>"$T/err"
    local got=$?
    if [ "$got" -ne "$want" ]; then
        cat "$T/err"
        fail "$* exited $got, expected $want"
    fi
}

no_temp_files() {
    if ls -A "$T" | grep -q partial; then fail "temp file left behind: $(ls -A "$T")"; fi
}

# usage errors
expect 2 "$BIN"
expect 2 "$BIN" "$SRC"
expect 2 "$BIN" "$SRC" "$T/a.loupe" --type int4
expect 2 "$BIN" "$SRC" "$T/a.loupe" --bogus
expect 2 "$BIN" "$SRC" "$T/a.loupe" --keep noequals
expect 2 "$BIN" "$SRC" "$T/a.loupe" --keep 'x=int3'
expect 2 "$BIN" "$SRC" "$T/a.loupe" --threads 0
expect 2 "$BIN" "$SRC" "$T/a.loupe" extra
expect 0 "$BIN" --help
grep -q "usage: quantize" "$T/out" || fail "--help prints no usage"
[ -e "$T/a.loupe" ] && fail "a usage error wrote a file"

# a normal run: summary on stdout, progress lines and notes on stderr
expect 0 "$BIN" "$SRC" "$T/a.loupe" --type int8 --threads 2
grep -q "a.loupe: 48 tensors.*(int8).*verified" "$T/out" || fail "no summary: $(cat "$T/out")"
grep -q "^48/48 output" "$T/err" || fail "no plain progress lines on a non-TTY"
grep -q "note: blk.0.ffn_down: n_in not a multiple of 32" "$T/err" || fail "no note"
expect 0 "$BIN" --verify "$T/a.loupe"
no_temp_files

# deterministic: the same source and options give the same bytes
expect 0 "$BIN" "$SRC" "$T/a2.loupe" --type int8 --threads 1
cmp -s "$T/a.loupe" "$T/a2.loupe" || fail "two runs gave different files"

# refusals and errors
expect 1 "$BIN" "$SRC" "$T/a.loupe"
grep -q -- "exists (use --force" "$T/err" || fail "no --force hint: $(cat "$T/err")"
expect 1 "$BIN" "$T/a.loupe" "$T/a.loupe" --force
grep -q "refusing to overwrite the source" "$T/err" || fail "overwrote the source?"
ln -sf "$T/a.loupe" "$T/link.loupe"
expect 1 "$BIN" "$T/a.loupe" "$T/link.loupe" --force
expect 1 "$BIN" "$T/missing.gguf" "$T/b.loupe"
grep -q "missing.gguf: cannot open" "$T/err" || fail "bad message: $(cat "$T/err")"
expect 1 "$BIN" "$SRC" "$T/no-such-dir/b.loupe"
expect 0 "$BIN" "$SRC" "$T/a.loupe" --force --type f16 --keep 'output=f32'
expect 0 "$BIN" --verify "$T/a.loupe"

# a damaged last tensor: loads, but --verify finds it
cp "$T/a.loupe" "$T/c.loupe"
size=$(stat -c %s "$T/c.loupe")
printf '\x7f' | dd of="$T/c.loupe" bs=1 seek=$((size - 10)) conv=notrunc status=none
expect 1 "$BIN" --verify "$T/c.loupe"
grep -q "tensor output: data checksum mismatch" "$T/err" || fail "$(cat "$T/err")"
expect 1 "$BIN" --verify "$SRC"
grep -q "bad magic" "$T/err" || fail "$(cat "$T/err")"
no_temp_files

# SIGKILL at many moments: never a partial DST, never a temp file left
for d in 0.001 0.003 0.005 0.008 0.01 0.015 0.02 0.03 0.04 0.06 0.08 0.12; do
    rm -f "$T/k.loupe"
    timeout -s KILL "$d" "$BIN" "$SRC" "$T/k.loupe" --type f32 >/dev/null 2>&1
    if [ -e "$T/k.loupe" ]; then
        "$BIN" --verify "$T/k.loupe" >/dev/null 2>&1 || fail "partial DST after SIGKILL at ${d}s"
    fi
    no_temp_files
done
# and over an existing DST: the old file survives intact until the new one replaces it
cp "$T/a.loupe" "$T/k.loupe"
for d in 0.005 0.01 0.02 0.04; do
    timeout -s KILL "$d" "$BIN" "$SRC" "$T/k.loupe" --force --type int8 >/dev/null 2>&1
    "$BIN" --verify "$T/k.loupe" >/dev/null 2>&1 || fail "DST damaged by SIGKILL at ${d}s"
    no_temp_files
done
# ---- loupe perplexity
LOUPE=${LOUPE_BIN}/loupe
G2=${LOUPE_SHARED}/models/slm-gpt2-char
# the corpus with every line reversed: in vocabulary, but not memorized
head -c 1500 "$G2/corpus.txt" | rev >"$T/text.txt"
expect 0 "$BIN" "$G2" "$T/g2-f32.loupe" --type f32
expect 0 "$BIN" "$G2" "$T/g2-int8.loupe" --type int8
expect 2 "$LOUPE" perplexity -m "$G2"
expect 2 "$LOUPE" perplexity -f "$T/text.txt"
expect 2 "$LOUPE" perplexity -m "$G2" -f "$T/text.txt" --ctx 1
expect 1 "$LOUPE" perplexity -m "$G2" -f "$T/text.txt" --ctx 4096
expect 1 "$LOUPE" perplexity -m "$G2" -f "$T/text.txt" --kl-base "$SRC"
grep -q "vocabulary" "$T/err" || fail "no vocabulary mismatch message: $(cat "$T/err")"

# the f32 .loupe file scores exactly like its source: KL 0, top-1 100%
expect 0 "$LOUPE" perplexity -m "$T/g2-f32.loupe" -f "$T/text.txt" --ctx 128 --kl-base "$G2"
grep -q "KL(base||model) nats/token: mean 0  median 0  p99 0  max 0" "$T/out" || fail "$(cat "$T/out")"
grep -q "top-1 agreement: 100.00%" "$T/out" || fail "$(cat "$T/out")"
ppl=$(sed -n 's/^perplexity: *//p' "$T/out")
base_ppl=$(sed -n 's/^base ppl: *//p' "$T/out")
[ "$ppl" = "$base_ppl" ] || fail "f32 perplexity $ppl differs from the source's $base_ppl"

# against an independent numpy forward pass (tests/ref/reference.py, float64):
# same windows (128 tokens, no BOS for this model), second halves scored
"$LOUPE" tokenize -m "$G2" --no-special <"$T/text.txt" >"$T/ids.txt" || fail "tokenize"
ref=$("${LOUPE_PYTHON:?}" - "$G2" "$T/ids.txt" <<'PY'
import math, sys
sys.path.insert(0, __import__("os").environ["LOUPE_SRC"] + "/tests/ref")
import numpy as np
import reference
model = reference.Model(sys.argv[1])
ids = [int(t) for t in open(sys.argv[2]).read().split()]
ctx, nll, n = 128, 0.0, 0
for s in range(0, len(ids) - ctx + 1, ctx):
    w = ids[s:s + ctx]
    lg = np.asarray(model.forward(w), dtype=np.float64)
    for i in range(ctx // 2 - 1, ctx - 1):
        row = lg[i] - lg[i].max()
        nll -= row[w[i + 1]] - math.log(np.exp(row).sum())
        n += 1
print("%.6f" % math.exp(nll / n))
PY
) || fail "reference perplexity"
"$LOUPE_PYTHON" -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(abs(a - b) > 1e-4 * b)" \
    "$ppl" "$ref" || fail "perplexity $ppl, numpy reference $ref"

# int8: close to the base, and measured (not identical)
expect 0 "$LOUPE" perplexity -m "$T/g2-int8.loupe" -f "$T/text.txt" --ctx 128 --kl-base "$G2"
grep -q "KL(base||model) nats/token: mean 0 " "$T/out" && fail "int8 KL exactly 0?"
agree=$(sed -n 's/^top-1 agreement: \([0-9.]*\)%.*/\1/p' "$T/out")
"$LOUPE_PYTHON" -c "import sys; sys.exit(float(sys.argv[1]) < 90)" "$agree" || fail "int8 top-1 agreement $agree%"
echo "quantize_test: all passed"
