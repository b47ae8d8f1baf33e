#!/usr/bin/env bash
# `loupe run --logprobs/--logprobs-json/--attention` on slm-gpt2-char (an HF
# checkpoint), checked against the float64 numpy reference
# (tests/ref/interp_ref.py record) on the same ids: every generated token's
# log-probability and top-5, and the (layers, heads, T, T) attention of the
# prompt plus the generated text, captured during generation.
set -u
: "${LOUPE_BIN:?}" "${LOUPE_SHARED:?}" "${LOUPE_SRC:?}" "${LOUPE_PYTHON:?}" "${LOUPE_TEST_TMP:?}"
pass=0; fail=0
ok() { echo "ok - $*"; pass=$((pass + 1)); }
bad() { echo "FAIL - $*"; fail=$((fail + 1)); }
loupe="$LOUPE_BIN/loupe"
model="$LOUPE_SHARED/models/slm-gpt2-char"
work="$LOUPE_TEST_TMP/run-inspect"; rm -rf "$work"; mkdir -p "$work"

prompt=$'Q: What is SLM?\nA:'
if "$loupe" run -m "$model" -p "$prompt" --temp 0 -n 12 -t 1 --logprobs 5 \
     --logprobs-json "$work/lp.json" --attention "$work/attn.npy" \
     > "$work/out.txt" 2> "$work/err.txt"; then
  ok "run with --logprobs and --attention"
else
  bad "run failed: $(cat "$work/err.txt")"
fi
grep -q "log-probabilities" "$work/err.txt" && ok "logprob table on stderr" || bad "no logprob table"
[ "$(head -c ${#prompt} "$work/out.txt")" = "$prompt" ] && ok "stdout still starts with the prompt" \
  || bad "stdout changed"

"$LOUPE_PYTHON" - "$model" "$work" "$LOUPE_SRC/tests/ref" <<'PY' && ok "logprobs and attention match the numpy reference" || bad "numpy comparison"
import json, subprocess, sys
import numpy as np
model, work, refdir = sys.argv[1:4]
sys.path.insert(0, refdir)
import interp_ref
greedy = json.load(open(model + "/greedy.json"))["cases"][0]
lp = json.load(open(work + "/lp.json"))["tokens"]
gen = [t["id"] for t in lp]
assert gen == greedy["greedy_ids"][:len(gen)], ("greedy ids differ", gen)
ids = greedy["prompt_ids"] + gen
subprocess.check_call([sys.executable, refdir + "/interp_ref.py", "record", model,
                       work + "/ref", "--ids", ",".join(map(str, ids))])
logits = np.load(work + "/ref/logits.npy").astype(np.float64)
ls = logits - logits.max(1, keepdims=True)
ls = ls - np.log(np.exp(ls).sum(1, keepdims=True))
n0 = len(greedy["prompt_ids"])
worst = 0.0
for i, t in enumerate(lp):
    row = ls[n0 + i - 1]
    worst = max(worst, abs(row[t["id"]] - t["logprob"]))
    top = [a["id"] for a in t["top_logprobs"]]
    want = list(np.argsort(-row, kind="stable")[:5])
    assert top[0] == want[0] and set(top) == set(want), (i, top, want)
    for a in t["top_logprobs"]:
        worst = max(worst, abs(row[a["id"]] - a["logprob"]))
assert worst < 1e-4, worst
att = np.load(work + "/attn.npy")
pat = np.load(work + "/ref/pattern.npy")
T = att.shape[2]
assert att.shape == (pat.shape[0], pat.shape[1], T, T) and T == len(ids) - 1, (att.shape, pat.shape)
d = np.abs(att - pat[:, :, :T, :T]).max()
assert d < 1e-5, d
print("max logprob error %.2e, max attention error %.2e over T=%d" % (worst, d, T))
PY

# errors: one sequence only; selections need --attention; bad selection
"$loupe" run -m "$model" -p "Q:" -n 2 --logprobs 2 --num-return-sequences 2 > /dev/null 2> "$work/e1"
[ $? -eq 2 ] && grep -q "one sequence" "$work/e1" && ok "--logprobs with 2 sequences is a usage error" \
  || bad "--logprobs with 2 sequences: $(cat "$work/e1")"
"$loupe" run -m "$model" -p "Q:" -n 2 --attn-layers 0 > /dev/null 2> "$work/e2"
[ $? -eq 2 ] && ok "--attn-layers without --attention is a usage error" || bad "--attn-layers alone"
"$loupe" run -m "$model" -p "Q:" -n 2 --temp 0 --attention "$work/x.json" --attn-layers 9 > /dev/null 2> "$work/e3"
[ $? -eq 1 ] && grep -q "outside 0-3" "$work/e3" && [ ! -s "$work/x.json" ] && ok "layer out of range is an error" || bad "layer 9: $(cat "$work/e3")"
"$loupe" run -m "$model" -p "Q:" -n 2 --logprobs 21 > /dev/null 2>&1
[ $? -eq 2 ] && ok "--logprobs 21 rejected" || bad "--logprobs 21 accepted"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
