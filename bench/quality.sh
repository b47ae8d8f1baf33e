#!/usr/bin/env bash
# quality.sh — how far the f16 and int8 .loupe files are from the f32
# weights at real model shapes: perplexity, KL(f32 || quantized) per token
# and top-1 agreement, measured by `loupe perplexity --kl-base`. Prints a
# Markdown table (also written to $OUT/table.md).
#
#   bench/quality.sh
#
# Environment (defaults in brackets):
#   BUILD        loupe build directory with loupe and quantize [<repo>/build-bench]
#   MODELS_DIR   scratch dir, outside the repository; files go to its
#                quality/ subfolder [/work/bench-models]
#   MODELS       presets [gpt2 tinyllama]; also llama3.2-1b qwen2.5-0.5b
#   SCALES       --logit-scale values of the synthetic models [1 3]
#   TEXTS        texts to score [corpus self]
#                  corpus: TEXT, a fixture text
#                  self:   SELF_TOKENS tokens sampled from the f32 model itself
#   TEXT         [<shared>/models/slm-gpt2-char/corpus.txt]
#   SELF_TOKENS  [1000]
#   CTX          window length of `loupe perplexity` [256]
#   THREADS      threads per loupe process [2]
#   TYPES        files compared with the f32 checkpoint [f16 int8 int8w]
#                  f16, int8: `quantize --type f16|int8`
#                  int8w: the int8 file converted back to f32: int8-rounded
#                  weights with f32 arithmetic, which separates the weight
#                  rounding from the int8 kernels' activation rounding
#   SHARED       the shared fixtures folder [<repo>/../shared]
#   OUT          logs and table [$MODELS_DIR/quality/results/<date>]
#   KEEP         1: keep the quantized .loupe files after the run [0]
#
# Why two logit scales: random weights give logits with a standard deviation
# of about 2 over tens of thousands of tokens, a nearly uniform next-token
# distribution (mean top-1 probability ~0.02), unlike a trained model's.
# synth.py --logit-scale K multiplies the final norm's weight by K, i.e. the
# same network at temperature 1/K; K = 3 gives a mean top-1 probability of
# ~0.5 at GPT-2 and TinyLlama shapes. It also multiplies the error that
# quantization leaves in the logits by K, so KL grows several-fold (x5-6
# for K = 3 at these shapes): a trained model (logits of std ~2-3 with a few tokens far above the rest)
# lies between the two rows; top-1 agreement does not depend on K.
#
# Why a "self" text: a random model assigns the fixture text a perplexity of
# 1e5..1e12, so its relative change under quantization is noise. On text
# sampled from the model itself (temperature 1, no truncation) the model is
# calibrated, as a trained model is on its own domain, and the expected rise
# of the log-perplexity is the mean KL. The text is detokenized and
# tokenized again, which does not always give back the sampled ids (SPM
# vocabularies least), so some positions are still "surprising" ones and the
# perplexity stays above exp(entropy).
#
# The f32 checkpoints (deterministic: synth.py's fixed seed) and the sampled
# texts are written once and reused; the .loupe files are made again on
# every run, so a change of the quantizer or the int8 kernels shows.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BUILD=${BUILD:-$REPO/build-bench}
MODELS_DIR=${MODELS_DIR:-/work/bench-models}
MODELS=${MODELS:-gpt2 tinyllama}
SCALES=${SCALES:-1 3}
TEXTS=${TEXTS:-corpus self}
SHARED=${SHARED:-$(cd "$REPO/.." && pwd)/shared}
TEXT=${TEXT:-$SHARED/models/slm-gpt2-char/corpus.txt}
SELF_TOKENS=${SELF_TOKENS:-1000}
CTX=${CTX:-256}
THREADS=${THREADS:-2}
TYPES=${TYPES:-f16 int8 int8w}
KEEP=${KEEP:-0}
DIR="$MODELS_DIR/quality"
OUT=${OUT:-$DIR/results/$(date +%Y%m%d-%H%M%S)}
PY=/usr/bin/python3

die() { echo "quality.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

for tool in "$BUILD/loupe" "$BUILD/quantize"; do
    [ -x "$tool" ] || die "$tool not found: build loupe first (cmake --build $BUILD)"
done
case "$MODELS_DIR" in "$REPO"/*) die "MODELS_DIR must be outside the repository" ;; esac
[ -f "$TEXT" ] || die "$TEXT: no such text (set TEXT or SHARED)"
mkdir -p "$DIR" "$OUT"

# ------------------------------------------------------------ names

# model_name: preset -> the base name of its files
# shellcheck source=bench/presets.sh
. "$HERE/presets.sh"

model_label() {
    case "$1" in
    gpt2) echo "GPT-2 124M" ;;
    tinyllama) echo "TinyLlama 1.1B" ;;
    llama3.2-1b) echo "Llama 3.2 1B" ;;
    qwen2.5-0.5b) echo "Qwen2.5 0.5B" ;;
    esac
}

# Runs a command at low priority (the machine is shared) and logs its time.
run_logged() { # logfile cmd...
    local logf=$1 t0 t1
    shift
    t0=$(date +%s)
    nice -n 10 "$@" > "$logf" 2> "$logf.err" || { cat "$logf.err" >&2; die "failed: $*"; }
    t1=$(date +%s)
    echo "$(( t1 - t0 ))s $*" >> "$OUT/times.log"
}

# ------------------------------------------------------------ files

# The f32 checkpoint of preset at logit scale k (written once).
checkpoint() { # preset k -> dir
    local preset=$1 k=$2 d
    d="$DIR/$(model_name "$preset")-k$k-f32-hf"
    if [ ! -f "$d/config.json" ] || ! ls "$d"/*.safetensors > /dev/null 2>&1; then
        log "synthesizing $preset (f32, logit scale $k) into $d"
        run_logged "$OUT/synth-$preset-k$k.log" \
            "$PY" "$REPO/tests/ref/synth.py" --preset "$preset" --dtype f32 \
            --logit-scale "$k" --out "$d"
    fi
    echo "$d"
}

# Text sampled from the f32 model (written once): prompt "Q:", temperature 1,
# every token allowed, EOS ignored, fixed seed.
self_text() { # hf name -> file
    local hf=$1 name=$2 f
    f="$DIR/$name-self.txt"
    if [ ! -s "$f" ]; then
        log "sampling $SELF_TOKENS tokens from $hf into $f"
        run_logged "$f.tmp" "$BUILD/loupe" run -m "$hf" -p "Q:" -n "$SELF_TOKENS" \
            --temp 1 --top-k 0 --top-p 1 --min-p 0 --seed 1 --ignore-eos -t "$THREADS"
        mv "$f.tmp" "$f"
        rm -f "$f.tmp.err"
    fi
    echo "$f"
}

# The .loupe file of type t (f16, int8, int8w) for checkpoint hf, made anew
# once per run (MADE lists the files made so far).
MADE=" "
make_file() { # hf name type
    local hf=$1 name=$2 t=$3 q
    q="$DIR/$name-$t.loupe"
    case "$MADE" in *" $q "*) return ;; esac
    case "$t" in
    f16 | int8)
        log "quantize $hf -> $q"
        run_logged "$OUT/quantize-$name-$t.log" "$BUILD/quantize" "$hf" "$q" --type "$t" --force
        ;;
    int8w)
        make_file "$hf" "$name" int8
        log "quantize $DIR/$name-int8.loupe -> $q (f32)"
        run_logged "$OUT/quantize-$name-$t.log" "$BUILD/quantize" "$DIR/$name-int8.loupe" "$q" \
            --type f32 --force
        ;;
    *) die "unknown type '$t' (f16 int8 int8w)" ;;
    esac
    MADE="$MADE$q "
}

# ------------------------------------------------------------ measure

# `loupe perplexity` output -> one Markdown row.
table_row() { # label k text type logfile
    local label=$1 k=$2 text=$3 type=$4 logf=$5
    awk -v label="$label" -v k="$k" -v text="$text" -v type="$type" '
        /^perplexity:/ { ppl = $2 }
        /^base ppl:/ { base = $3 }
        /^KL\(base/ { mean = $4; med = $6; p99 = $8; mx = $10 }
        /^top-1 agreement:/ { top = $3; got = $4; of = $6; sub(/^\(/, "", got); sub(/\)$/, "", of) }
        function e(x) { return x == 0 ? "0" : sprintf("%.1e", x) }
        END {
            if (ppl == "" || base == "" || mean == "") exit 1
            printf "| %s | %s | %s | %s | %.6g | %.6g | %+.3f%% | %s | %s | %s | %s | %s (%s/%s) |\n",
                label, k, text, type, ppl, base, (ppl / base - 1) * 100,
                e(mean), e(med), e(p99), e(mx), top, got, of
        }' "$logf" || die "$logf: unexpected output of loupe perplexity"
}

measure_model() { # preset k
    local preset=$1 k=$2 name label hf t text tf q logf
    name=$(model_name "$preset")-k$k
    label=$(model_label "$preset")
    hf=$(checkpoint "$preset" "$k")
    for t in $TYPES; do make_file "$hf" "$name" "$t"; done
    for text in $TEXTS; do
        case "$text" in
        corpus) tf=$TEXT ;;
        self) tf=$(self_text "$hf" "$name") ;;
        *) die "unknown text '$text' (corpus self)" ;;
        esac
        for t in $TYPES; do
            logf="$OUT/ppl-$name-$text-$t.log"
            log "perplexity $name $t on $text"
            run_logged "$logf" "$BUILD/loupe" perplexity -m "$DIR/$name-$t.loupe" -f "$tf" \
                --ctx "$CTX" --kl-base "$hf" -t "$THREADS"
            table_row "$label" "$k" "$text" "$t" "$logf" >> "$OUT/rows.md"
        done
    done
    if [ "$KEEP" != 1 ]; then
        for t in $TYPES int8; do rm -f "$DIR/$name-$t.loupe"; done
    fi
}

# Commit of the source tree, "+changes" when it has uncommitted edits.
tree_state() {
    local head
    head=$(git -C "$REPO" rev-parse --short HEAD 2> /dev/null) || { echo unknown; return; }
    if [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2> /dev/null)" ]; then
        head="$head+changes"
    fi
    echo "$head"
}

# ------------------------------------------------------------ main

: > "$OUT/rows.md"
start=$(date +%s)
for preset in $MODELS; do
    for k in $SCALES; do
        measure_model "$preset" "$k"
    done
done
{
    echo "| shape | logit scale | text | type | perplexity | f32 perplexity | change | KL mean | KL median | KL p99 | KL max | top-1 agreement |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    cat "$OUT/rows.md"
    echo
    echo "$("$BUILD/loupe" --version 2>&1 | head -1) ($BUILD, tree $(tree_state))," \
        "--ctx $CTX, -t $THREADS, $(date +%F), $(( $(date +%s) - start )) s."
    for text in $TEXTS; do
        case "$text" in
        corpus) echo "Text corpus: $(basename "$TEXT") ($(wc -c < "$TEXT") bytes)." ;;
        self) echo "Text self: $SELF_TOKENS tokens sampled from the f32 model (prompt \"Q:\", temperature 1)." ;;
        esac
    done
} > "$OUT/table.md"
cat "$OUT/table.md"
log "logs in $OUT"
