#!/usr/bin/env bash
# interp_test.sh — the interpretability subcommands of the built `loupe`
# on slm-gpt2-char: attention files loaded by numpy (.npy, .json) and
# checked against the numpy forward pass of tests/ref/interp_ref.py; the
# PNG decoded by Python; the HTML reports rendered in headless Chromium
# (a screenshot that is not blank, a DOM that holds the tokens' text);
# lens/attribute/ablate/steer/compare outputs and their usage errors.
# Env: LOUPE_BIN, LOUPE_SHARED, LOUPE_SRC, LOUPE_PYTHON, LOUPE_TEST_TMP.
# Chromium is required (tools/setup-deps.sh installs
# it); LOUPE_SKIP_BROWSER=1 skips the rendering checks explicitly.
set -u

BIN="${LOUPE_BIN:?set LOUPE_BIN to the build directory}/loupe"
SHARED="${LOUPE_SHARED:?set LOUPE_SHARED to the shared directory}"
SRC="${LOUPE_SRC:?set LOUPE_SRC to the source directory}"
PY="${LOUPE_PYTHON:-python3}"
REF="$SRC/tests/ref/interp_ref.py"
CHAR="$SHARED/models/slm-gpt2-char"
PROMPT=$'Q: What is SLM?\nA:'

TMP=$(mktemp -d "${LOUPE_TEST_TMP:-/tmp}/interp_test.XXXXXX")
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
run() {
    "$BIN" "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
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
# check NAME CMD...: CMD succeeds (its output shown on failure).
check() {
    local name=$1
    shift
    if "$@" >"$TMP/check" 2>&1; then ok "$name"; else bad "$name" "$(head -c 1500 "$TMP/check")"; fi
}

[ -x "$BIN" ] || { echo "no binary at $BIN"; echo "0 passed, 1 failed"; exit 1; }

# ------------------------------------------------------------ attention files
run attention -m "$CHAR" -p "$PROMPT" -o "$TMP/a.npy" -o "$TMP/a.json" -o "$TMP/a.html" -o "$TMP/a.png"
[ "$rc" -eq 0 ] && ok "attention writes four files" || bad "attention writes four files" "$(cat "$TMP/err")"
grep -q "previous-token\|prev" "$TMP/out" && ok "attention prints a per-head summary" \
    || bad "attention prints a per-head summary" "$(head -5 "$TMP/out")"

# the ids the numpy reference runs: the JSON's token_ids
IDS=$("$PY" -c "import json; print(','.join(map(str, json.load(open('$TMP/a.json'))['token_ids'])))")
check "numpy reference runs" "$PY" "$REF" record "$CHAR" "$TMP/ref" --ids "$IDS"
check ".npy: numpy loads (4, 4, T, T) float32 = reference within 1e-5, causal rows of sum 1" \
    "$PY" - "$TMP/a.npy" "$TMP/ref/pattern.npy" <<'EOF'
import sys, numpy as np
a, ref = np.load(sys.argv[1]), np.load(sys.argv[2])
assert a.dtype == np.float32 and a.flags.c_contiguous, (a.dtype, a.flags)
assert a.shape == ref.shape and a.shape[:2] == (4, 4), (a.shape, ref.shape)
err = np.abs(a - ref).max()
assert err <= 1e-5, "max |loupe - numpy| = %g" % err
assert np.abs(a.sum(-1) - 1).max() <= 1e-5
T = a.shape[-1]
assert (a[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0).all()
print("max error %.2g" % err)
EOF
check ".json: schema and the same numbers as the .npy" "$PY" - "$TMP/a.json" "$TMP/a.npy" <<'EOF'
import sys, json, numpy as np
d, a = json.load(open(sys.argv[1])), np.load(sys.argv[2])
assert d["format"] == "loupe-attention" and d["version"] == 1, d["format"]
assert d["model"] == "slm-gpt2-char", d["model"]
assert "".join(d["tokens"]) == "Q: What is SLM?\nA:", d["tokens"]
assert d["layers"] == [0, 1, 2, 3] and d["heads"] == [0, 1, 2, 3]
assert d["shape"] == list(a.shape)
assert (np.array(d["attention"], dtype=np.float32) == a).all()
EOF

run attention -m "$CHAR" -p "$PROMPT" --layers 1,3 --heads 2-3 -q -o "$TMP/s.npy"
check "--layers 1,3 --heads 2-3 selects those planes" "$PY" -c "
import numpy as np
a, s = np.load('$TMP/a.npy'), np.load('$TMP/s.npy')
assert s.shape[:2] == (2, 2), s.shape
assert (s == a[[1, 3]][:, [2, 3]]).all()"

check ".png: decodes to the grid size, not blank" "$PY" - "$REF" "$TMP/a.png" "$TMP/png.npy" <<'EOF'
import sys, subprocess, numpy as np
subprocess.check_call([sys.executable, sys.argv[1], "png", sys.argv[2], sys.argv[3]])
img = np.load(sys.argv[3])
T = 18; s = 160 // T; side = 2 + 4 * (T * s + 2)
assert img.shape == (side, side, 3), img.shape
assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20, "too few colours"
EOF

# ------------------------------------------------------------ browser
CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
# shot NAME FILE.html [#hash]: screenshot + DOM of the page in $TMP/NAME.{png,dom}
shot() {
    local name=$1 page=$2 hash=${3:-}
    local prof
    prof=$(mktemp -d "$TMP/chrome.XXXXXX")
    local flags=(--headless --no-sandbox --disable-gpu --disable-background-networking
                 --disable-component-update --disable-sync --no-first-run
                 --user-data-dir="$prof" --window-size=1000,900)
    timeout 120 "$CHROME" "${flags[@]}" --screenshot="$TMP/$name.png" "file://$page$hash" \
        >"$TMP/$name.log" 2>&1
    timeout 120 "$CHROME" "${flags[@]}" --dump-dom "file://$page$hash" >"$TMP/$name.dom" \
        2>>"$TMP/$name.log"
}
# rendered NAME: the screenshot has content (not one flat colour).
rendered() {
    "$PY" "$REF" png "$TMP/$1.png" "$TMP/$1-px.npy" && "$PY" -c "
import numpy as np
img = np.load('$TMP/$1-px.npy')
dark = (img.sum(-1) < 600).mean()
assert img.shape[0] > 100 and img.shape[1] > 100, img.shape
assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50, 'blank screenshot'
assert dark > 0.002, 'almost nothing drawn (%.4f dark)' % dark"
}

if [ "${LOUPE_SKIP_BROWSER:-0}" = 1 ]; then
    echo "SKIPPED browser checks (LOUPE_SKIP_BROWSER=1)"
elif [ -z "$CHROME" ]; then
    bad "chromium present" "no chromium: tools/setup-deps.sh (or LOUPE_SKIP_BROWSER=1)"
else
    shot head "$TMP/a.html"
    check "attention HTML (head view) renders" rendered head
    # the JS drew one SVG text per token on each side, and the static list holds them
    check "attention HTML DOM holds the tokens" "$PY" - "$TMP/head.dom" "$TMP/a.json" <<'EOF'
import sys, re, json, html
dom, toks = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))["tokens"]
texts = [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", dom)]
assert len(texts) >= 2 * len(toks) + 2, "SVG has %d texts for %d tokens" % (len(texts), len(toks))
shown = [t.replace(" ", "\u2423").replace("\n", "\\n") for t in toks]
for t in shown:
    assert t in texts, "token %r not drawn" % t
assert "SLM" in re.sub(r"<[^>]+>", "", dom).replace(" ", "").replace("\n", ""), "token text missing"
assert dom.count("<line") > 50, "too few attention lines"
EOF
    shot model "$TMP/a.html" "#model"
    check "attention HTML (model view) renders" rendered model
    check "model view has a canvas per head" "$PY" -c "
dom = open('$TMP/model.dom').read()
assert dom.count('<canvas') == 16, dom.count('<canvas')"

    "$BIN" lens -m "$CHAR" -p "$PROMPT" -q -o "$TMP/l.html" 2>/dev/null
    shot lens "$TMP/l.html"
    check "lens HTML renders" rendered lens
    check "lens HTML DOM holds the tokens" grep -q "What\|<span class=\"tok\">W</span>" "$TMP/lens.dom"

    "$BIN" attribute -m "$CHAR" -p "$PROMPT" --target " SLM" -o "$TMP/at.html" >/dev/null 2>&1
    shot attr "$TMP/at.html"
    check "attribution HTML renders" rendered attr
    check "attribution HTML DOM holds the tokens" grep -q "<span class=\"tok\"[^>]*>S</span>" "$TMP/attr.dom"
fi

# ------------------------------------------------------------ lens
run lens -m "$CHAR" -p "$PROMPT" -k 2 -o "$TMP/l.json"
[ "$rc" -eq 0 ] && grep -q "^0 " "$TMP/out" && ok "lens prints a table" || bad "lens prints a table" "$(cat "$TMP/err")"
check "lens JSON: every layer's top-2 = the numpy lens" "$PY" - "$TMP/l.json" "$TMP/ref/lens.npy" <<'EOF'
import sys, json, numpy as np
d, lens = json.load(open(sys.argv[1])), np.load(sys.argv[2])
assert d["format"] == "loupe-lens" and d["k"] == 2
top = np.argsort(-lens, axis=-1)[..., :2]
assert (np.array(d["top_ids"]) == top).all(), "top-2 ids differ from numpy"
p = np.exp(np.take_along_axis(lens, top, -1))
assert np.abs(np.array(d["top_probs"]) - p).max() < 1e-4
EOF

# ------------------------------------------------------------ attribute
run attribute -m "$CHAR" -p "$PROMPT" --target " SLM" --method shapley --samples 5 --seed 7 -o "$TMP/sh.json"
check "attribute shapley: scores sum to log p - log p(empty)" "$PY" -c "
import json
d = json.load(open('$TMP/sh.json'))
assert d['method'] == 'shapley' and d['samples'] == 5 and not d['exact']
assert abs(sum(d['scores']) - (d['logprob'] - d['empty_logprob'])) < 1e-3"
run attribute -m "$CHAR" -p "$PROMPT" --target " SLM" --method nope
expect "attribute: unknown method is a usage error" 2 "unknown attribution method 'nope'"
run attribute -m "$CHAR" -p "$PROMPT"
expect "attribute: --target is required" 2 "no target"

# ------------------------------------------------------------ ablate / patch
run ablate -m "$CHAR" -p "$PROMPT" --target " SLM" --heads 0.0-3,1.0-3,2.0-3,3.0-3
[ "$rc" -eq 0 ] && grep -q "ablated" "$TMP/out" && ok "ablate every head" || bad "ablate every head" "$(cat "$TMP/err")"
run ablate -m "$CHAR" -p "$PROMPT" --target " SLM" --heads 4.0
expect "ablate: a head outside the model is named" 1 "4.0"
run ablate -m "$CHAR" -p "$PROMPT" --target " SLM" --patch "$PROMPT" -o "$TMP/p.json"
check "patching a prompt into itself changes nothing" "$PY" -c "
import json, numpy as np
d = json.load(open('$TMP/p.json'))
lp = np.array(d['logprob'])
assert lp.shape == (4, 18) and d['clean_logprob'] == d['corrupt_logprob']
assert np.abs(lp - d['clean_logprob']).max() < 1e-6"
run ablate -m "$CHAR" -p "Q: Hi" --target " SLM" --patch "$PROMPT"
expect "patching needs equal token counts" 1 "same count"

# ------------------------------------------------------------ steer
run steer -m "$CHAR" -p "$PROMPT" --layer 2 --scale 0 --from "Q:" --to "A:" -n 20 --baseline
check "steering with scale 0 is the baseline" "$PY" -c "
out = open('$TMP/out').read().split('---')
assert len(out) == 5, out
assert out[2] == out[4], out"
run steer -m "$CHAR" -p "$PROMPT" --layer 2 --scale 4 --from "Q: How many" --to "A: Enough" -n 20 \
    --baseline --save-vector "$TMP/v.npy"
check "steering with scale 4 changes the text; the vector is saved" "$PY" -c "
import numpy as np
out = open('$TMP/out').read().split('---')
assert out[2] != out[4], out
assert np.load('$TMP/v.npy').shape == (64,)"
"$PY" -c "import numpy as np; np.save('$TMP/bad.npy', np.ones(63))"
run steer -m "$CHAR" -p "$PROMPT" --layer 2 --vector "$TMP/bad.npy"
expect "steer: a vector of the wrong width is refused" 1 "64 floats"
run steer -m "$CHAR" -p "$PROMPT" --layer 9 --vector "$TMP/v.npy"
expect "steer: a layer outside the model is refused" 1 "4 layers"

# ------------------------------------------------------------ compare
run compare "$CHAR" "$CHAR" -p "$PROMPT" -o "$TMP/c.json"
check "compare a model with itself: all zero" "$PY" -c "
import json
d = json.load(open('$TMP/c.json'))
assert d['format'] == 'loupe-compare' and len(d['attn_js']) == 4
assert max(d['attn_js']) < 1e-9 and max(d['lens_kl']) < 1e-9, d"
run compare "$CHAR" -p "$PROMPT"
expect "compare needs two models" 2 "two models"

# ------------------------------------------------------------ usage errors
run attention -p "$PROMPT"
expect "attention without a model" 2 "no model"
run attention -m "$CHAR" -p "$PROMPT" --layers 7
expect "attention: a layer outside the model is named" 1 "'7'"
run attention -m "$CHAR" -p "$PROMPT" -o "$TMP/a.txt"
expect "attention: unknown output type" 1 "use .json, .npy, .html or .png"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
