#!/bin/bash
# quantize_test.sh — the quantize tool's command line: exit codes (0 / 1
# error / 2 usage), refusals, --verify, progress and notes on a non-TTY,
# deterministic output, the packed int8 layout (layout 1) byte for byte
# against a numpy packer written from docs/FORMAT.md, --format 1.0 files,
# and that a run killed with SIGKILL at any moment leaves either no DST or
# a complete, valid one (and no temp file).
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
expect 2 "$BIN" "$SRC" "$T/a.loupe" --format 2.0
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

# int8 matrices in layout 1, byte for byte as docs/FORMAT.md describes them:
# numpy quantizes the source weights (gguf_np.quantize_q8_0) and packs them
# by the spec; padding rows included (stories' ffn_gate has 172 rows, the
# gpt2-char token embedding 54). Format 1.0 keeps them row-major (layout 0).
G2=${LOUPE_SHARED}/models/slm-gpt2-char
expect 0 "$BIN" "$SRC" "$T/a10.loupe" --type int8 --format 1.0
expect 0 "$BIN" --verify "$T/a10.loupe"
expect 0 "$BIN" "$G2" "$T/g2e.loupe" --type int8 --keep token_embd=int8
expect 0 "$BIN" "$G2" "$T/g2e10.loupe" --type int8 --keep token_embd=int8 --format 1.0
"${LOUPE_PYTHON:?}" - "$SRC" "$G2" "$T" <<'PY' || fail "packed layout differs from the numpy packer"
import os, struct, sys
sys.path.insert(0, os.environ["LOUPE_SRC"] + "/tests/ref")
import numpy as np
import gguf_np

src, g2, tmp = sys.argv[1:4]

def directory(path):
    """header minor and {name: (type, layout, shape, bytes)} of a .loupe file"""
    buf = open(path, "rb").read()
    minor, = struct.unpack_from("<H", buf, 10)
    dir_off, = struct.unpack_from("<Q", buf, 40)
    n, = struct.unpack_from("<I", buf, 72)
    out = {}
    for i in range(n):
        e = dir_off + 128 * i
        name = buf[e:e + 48].rstrip(b"\0").decode()
        typ, layout, nd = struct.unpack_from("<III", buf, e + 48)
        shape = struct.unpack_from("<4Q", buf, e + 64)[:nd]
        off, size = struct.unpack_from("<QQ", buf, e + 96)
        out[name] = (typ, layout, shape, buf[off:off + size])
    return minor, out

def pack(q8, rows, cols):
    """Q8_0 blocks (rows, cols/32) -> layout 1: groups of 16 rows, each
    d[b][i] (fp16) then qs[b][j][i][k] = 128 + q[16g+i][32b+4j+k]"""
    nb, groups = cols // 32, (rows + 15) // 16
    blk = np.frombuffer(q8, dtype=[("d", "<u2"), ("qs", "i1", (32,))]).reshape(rows, nb)
    d = np.zeros((groups * 16, nb), "<u2")
    q = np.zeros((groups * 16, nb, 32), np.int16)
    d[:rows], q[:rows] = blk["d"], blk["qs"]
    out = b""
    for g in range(groups):
        dg, qg = d[16 * g:16 * g + 16], q[16 * g:16 * g + 16].reshape(16, nb, 8, 4)
        out += dg.T.astype("<u2").tobytes()
        out += (qg.transpose(1, 2, 0, 3) + 128).astype(np.uint8).tobytes()
    return out

def check(path, old_path, name, w):
    rows, cols = w.shape
    q8 = gguf_np.quantize_q8_0(w)
    minor, d = directory(path)
    typ, layout, shape, data = d[name]
    assert (minor, typ, layout, shape) == (1, 3, 1, (rows, cols)), (path, name, minor, typ, layout, shape)
    assert len(data) == (rows + 15) // 16 * 16 * cols // 32 * 34, (name, len(data))
    assert data == pack(q8, rows, cols), "%s %s: packed bytes differ" % (path, name)
    minor, d = directory(old_path)
    typ, layout, shape, data = d[name]
    assert (minor, typ, layout, shape) == (0, 3, 0, (rows, cols)), (old_path, name, minor, typ, layout)
    assert data == q8, "%s %s: row-major blocks differ" % (old_path, name)
    for n, (typ, layout, _, _) in d.items():
        assert layout == 0, (old_path, n, layout)

_, _, tensors, _ = gguf_np.read_gguf(src)
W = {n: np.frombuffer(raw, "<f4").reshape(ne[1], ne[0]) for n, t, ne, raw in tensors if len(ne) == 2}
for name in ("blk.0.attn_k", "blk.3.ffn_gate", "output"):
    check(tmp + "/a.loupe", tmp + "/a10.loupe", name, W[name + ".weight"])
st = gguf_np.read_safetensors(g2 + "/model.safetensors")
check(tmp + "/g2e.loupe", tmp + "/g2e10.loupe", "token_embd", np.ascontiguousarray(st["transformer.wte.weight"]))
check(tmp + "/g2e.loupe", tmp + "/g2e10.loupe", "blk.1.ffn_up", gguf_np.gpt2_weight(st, "h.1.mlp.c_fc"))
PY
# both layouts load: the same report (int8 shown as Q8_0) and the same text
LOUPE=${LOUPE_BIN}/loupe
"$LOUPE" info "$T/g2e.loupe" | grep -v "^model:" >"$T/info11" || fail "loupe info on a 1.1 file"
"$LOUPE" info "$T/g2e10.loupe" | grep -v "^model:" >"$T/info10" || fail "loupe info on a 1.0 file"
cmp -s "$T/info11" "$T/info10" || fail "loupe info differs: $(diff "$T/info11" "$T/info10")"
grep -q "token_embd  *Q8_0  *\[54, 64\]" "$T/info11" || fail "no int8 token_embd in: $(cat "$T/info11")"
"$LOUPE" run -m "$T/g2e.loupe" -p "the" -n 40 --temp 0 >"$T/run11" 2>/dev/null || fail "run 1.1"
"$LOUPE" run -m "$T/g2e10.loupe" -p "the" -n 40 --temp 0 >"$T/run10" 2>/dev/null || fail "run 1.0"
cmp -s "$T/run11" "$T/run10" || fail "1.1 and 1.0 files generate different text"
no_temp_files

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
