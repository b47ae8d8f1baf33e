#!/usr/bin/env bash
# e2e.sh — end-to-end speed and memory of loupe on real-shape models, and
# optionally llama.cpp's llama-bench on the very same GGUF files.
#
#   bench/e2e.sh [STEP...]        steps: prepare membw bench ab roofline rss
#                                 open pool busy report (default: all but ab
#                                 and roofline, in that order; ab needs
#                                 LLAMA_BENCH)
#
# Environment (defaults in brackets):
#   BUILD        loupe build directory with loupe, quantize, libloupe.so
#                [<repo>/build-bench]
#   MODELS_DIR   scratch dir for checkpoints and converted files, reused
#                when present; keep it outside the repository [/work/bench-models]
#   MODELS       presets to run [gpt2 tinyllama]; also llama3.2-1b qwen2.5-0.5b
#   FORMATS      files to bench [loupe-int8 loupe-f16 gguf-q8_0 gguf-f16]
#   PP TG THREADS REPS   llama-bench style parameters [512 128 1,2 3]
#   ROUNDS       interleaved loupe / llama.cpp rounds of the ab step [7]
#   TESTS        what the ab step times ["pp tg"]: pp, tg, and tgd (TG tokens
#                decoded with DEPTH [512] already in the cache, both engines
#                with an f16 KV cache: llama.cpp's default, loupe's --kv-f16)
#   LLAMA_BENCH  path to a llama-bench binary: also runs it on the gguf files
#   OUT          results dir [$MODELS_DIR/results/<date>]
#   IDLE_MAX     most CPU (in % of all cores) others may use before a timed
#                step starts [15]; IDLE_WAIT seconds to wait for that [900]
#   CONTENTION_MAX  a timed unit during which others used more than this %
#                of the machine is run again [10], up to RETRIES times [3]
#   IDLE_MAX_1 CONTENTION_MAX_1  the same for 1-thread units [55 55]: one
#                core busy elsewhere is tolerated (see RESULTS.md for a check)
#   BUSY_CPU     core that the busy-machine test keeps busy [1]
#
# Each timed step first waits until the machine is idle enough (other
# processes using < IDLE_MAX % of the CPUs over 3 s) and records what it saw
# in idle.log; contention.tsv says how much CPU others took during each run.
# Results: $OUT/*.json (one file per run), $OUT/*.log, $OUT/report.md (the
# markdown tables, also printed at the end).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BUILD=${BUILD:-$REPO/build-bench}
MODELS_DIR=${MODELS_DIR:-/work/bench-models}
MODELS=${MODELS:-gpt2 tinyllama}
FORMATS=${FORMATS:-loupe-int8 loupe-f16 gguf-q8_0 gguf-f16}
PP=${PP:-512}
TG=${TG:-128}
DEPTH=${DEPTH:-512}
THREADS=${THREADS:-1,2}
REPS=${REPS:-3}
ROUNDS=${ROUNDS:-7}
TESTS=${TESTS:-pp tg}
LLAMA_BENCH=${LLAMA_BENCH:-}
OUT=${OUT:-$MODELS_DIR/results/$(date +%Y%m%d-%H%M%S)}
IDLE_MAX=${IDLE_MAX:-15}
CONTENTION_MAX=${CONTENTION_MAX:-10}
IDLE_MAX_1=${IDLE_MAX_1:-55}
CONTENTION_MAX_1=${CONTENTION_MAX_1:-55}
RETRIES=${RETRIES:-3}
IDLE_WAIT=${IDLE_WAIT:-900}
BUSY_CPU=${BUSY_CPU:-1}
PY=/usr/bin/python3

STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(prepare membw bench rss open pool busy report)

die() { echo "e2e.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

for tool in "$BUILD/loupe" "$BUILD/quantize"; do
    [ -x "$tool" ] || die "$tool not found: build loupe first (cmake --build $BUILD)"
done
case "$MODELS_DIR" in "$REPO"/*) die "MODELS_DIR must be outside the repository" ;; esac
mkdir -p "$MODELS_DIR" "$OUT"

# ------------------------------------------------------------ names

# model_name: preset -> the base name of its files
# shellcheck source=bench/presets.sh
. "$HERE/presets.sh"

# model base name, format -> file path
model_file() {
    case "$2" in
    loupe-*) echo "$MODELS_DIR/$1-${2#loupe-}.loupe" ;;
    gguf-*) echo "$MODELS_DIR/$1-${2#gguf-}.gguf" ;;
    *) die "unknown format '$2'" ;;
    esac
}

# ------------------------------------------------------------ idle check

# Percentage of all CPUs busy over 3 seconds (from /proc/stat).
cpu_busy_pct() {
    local a b
    a=($(head -1 /proc/stat))
    sleep 3
    b=($(head -1 /proc/stat))
    local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) ))
    local total=0 i
    for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
    [ "$total" -gt 0 ] || { echo 0; return; }
    echo $(( 100 * (total - idle) / total ))
}

# Waits until others use at most MAX % of the CPUs (default IDLE_MAX);
# appends what it saw to idle.log.
wait_idle() { # what [max]
    local what=$1 max=${2:-$IDLE_MAX} waited=0 busy
    while :; do
        busy=$(cpu_busy_pct)
        if [ "$busy" -le "$max" ]; then
            echo "$(date -Is) $what: cpu busy ${busy}% (waited ${waited}s)" >> "$OUT/idle.log"
            return
        fi
        if [ "$waited" -ge "$IDLE_WAIT" ]; then
            echo "$(date -Is) $what: cpu busy ${busy}% after ${waited}s: running anyway" \
                >> "$OUT/idle.log"
            log "warning: machine still ${busy}% busy; $what runs anyway"
            return
        fi
        log "machine ${busy}% busy, waiting before $what"
        sleep 20
        waited=$(( waited + 23 ))
    done
}

# "busy total" jiffies of all CPUs so far (from /proc/stat).
cpu_jiffies() {
    local a i total=0
    a=($(head -1 /proc/stat))
    for i in 1 2 3 4 5 6 7 8; do total=$(( total + a[i] )); done
    echo "$(( total - a[4] - a[5] )) $total"
}

# Runs a timed command and appends to contention.tsv (label, wall s, own CPU
# s, others %) how much CPU other processes used meanwhile: all busy CPU
# time minus the command's own, in % of the machine. Above a few % the
# run's numbers are suspect.
timed() { # label cmd...
    local label=$1 before after
    shift
    before=$(cpu_jiffies)
    /usr/bin/time -f "%e %U %S" -o "$OUT/.time" "$@"
    after=$(cpu_jiffies)
    echo "$label $before $after $(cat "$OUT/.time") $(getconf CLK_TCK)" | awk '{
        n = NF; hz = $n; sys = $(n - 1); user = $(n - 2); wall = $(n - 3)
        b0 = $(n - 7); t0 = $(n - 6); b1 = $(n - 5); t1 = $(n - 4)
        label = $1; for (i = 2; i <= n - 8; i++) label = label " " $i
        busy = (b1 - b0) / hz; total = (t1 - t0) / hz; own = user + sys
        others = total > 0 ? (busy - own) / total * 100 : 0
        if (others < 0) others = 0
        printf "%s\t%.1f\t%.1f\t%.1f\n", label, wall, own, others
    }' | tee -a "$OUT/contention.tsv" | cut -f4 > "$OUT/.others"
}

# ------------------------------------------------------------ prepare

prepare_model() {
    local preset=$1 name hf
    name=$(model_name "$preset")
    hf="$MODELS_DIR/$name-hf"
    if [ ! -f "$hf/config.json" ] || ! ls "$hf"/*.safetensors > /dev/null 2>&1; then
        log "synthesizing $preset into $hf"
        "$PY" "$REPO/tests/ref/synth.py" --preset "$preset" --dtype f16 --out "$hf"
    fi
    local fmt f
    for fmt in $FORMATS; do
        f=$(model_file "$name" "$fmt")
        [ -s "$f" ] && continue
        log "writing $f"
        case "$fmt" in
        loupe-*) "$BUILD/quantize" "$hf" "$f" --type "${fmt#loupe-}" --force > /dev/null ;;
        gguf-*) "$PY" "$HERE/make_gguf.py" "$hf" "$f" --type "${fmt#gguf-}" ;;
        esac
    done
}

build_open_time() {
    local bin="$MODELS_DIR/bin/open_time"
    mkdir -p "$MODELS_DIR/bin"
    if [ ! -x "$bin" ] || [ "$HERE/open_time.c" -nt "$bin" ]; then
        cc -O2 -std=c11 -Wall -Wextra -I"$REPO/include" "$HERE/open_time.c" \
            -L"$BUILD" -lloupe -Wl,-rpath,"$BUILD" -o "$bin"
    fi
    echo "$bin"
}

# ------------------------------------------------------------ bench

# One timed unit: engine (loupe or llama), model, format, threads, test
# (pp or tg). A unit whose result file exists is skipped, so an interrupted
# run resumes with the same OUT. A unit during which other processes took
# more than CONTENTION_MAX % of the machine is run again, up to RETRIES times
# (the last try is kept; contention.tsv lists every try).
bench_unit() { # engine name fmt threads test
    local engine=$1 name=$2 fmt=$3 t=$4 test=$5 f out p=0 n=0 try others
    local idle_max=$IDLE_MAX cmax=$CONTENTION_MAX
    if [ "$t" = 1 ]; then idle_max=$IDLE_MAX_1; cmax=$CONTENTION_MAX_1; fi
    f=$(model_file "$name" "$fmt")
    out="$OUT/bench-$engine-$name-$fmt-t$t-$test.json"
    [ -s "$out" ] && return
    if [ "$test" = pp ]; then p=$PP; else n=$TG; fi
    for try in $(seq "$RETRIES"); do
        wait_idle "$engine $name $fmt t=$t $test" "$idle_max"
        log "$engine $(basename "$f") t=$t $test (try $try)"
        if [ "$engine" = loupe ]; then
            timed "loupe $name $fmt t=$t $test" "$BUILD/loupe" bench -m "$f" -p "$p" -n "$n" \
                -t "$t" -r "$REPS" --json > "$out.part" 2>> "$OUT/bench.log"
        else
            timed "llama.cpp $name $fmt t=$t $test" "$LLAMA_BENCH" -m "$f" -p "$p" -n "$n" \
                -t "$t" -r "$REPS" -o json > "$out.part" 2>> "$OUT/bench.log"
        fi
        others=$(cat "$OUT/.others")
        [ "${others%.*}" -le "$cmax" ] && break
        log "others took ${others}% of the machine meanwhile"
    done
    mv "$out.part" "$out"
}

# loupe and llama.cpp on the same weights run back to back, test by test;
# every model at one thread first (those tolerate a busy neighbour core).
step_bench() {
    local preset name fmt t test
    for t in ${THREADS//,/ }; do
        for preset in $MODELS; do
            name=$(model_name "$preset")
            for test in pp tg; do
                for fmt in $FORMATS; do
                    bench_unit loupe "$name" "$fmt" "$t" "$test"
                    if [ -n "$LLAMA_BENCH" ] && [ "${fmt%%-*}" = gguf ]; then
                        bench_unit llama "$name" "$fmt" "$t" "$test"
                    fi
                done
            done
        done
    done
}

# ------------------------------------------------------------ ab

# Interleaved rounds: loupe and llama-bench take turns, one repetition each,
# ROUNDS times per test, and each round gives a ratio. This host's memory
# bandwidth drifts by up to 2x within minutes (bench/RESULTS.md), so two
# engines timed minutes apart can differ by more than they really do; the
# median of the per-round ratios cancels most of the drift. llama.cpp runs
# on the GGUF file with the same weights (loupe-int8 -> gguf-q8_0).
step_ab() {
    [ -n "$LLAMA_BENCH" ] || die "the ab step needs LLAMA_BENCH"
    local preset name fmt ref t test p n d kv r f g
    for t in ${THREADS//,/ }; do
        for preset in $MODELS; do
            name=$(model_name "$preset")
            for test in $TESTS; do
                p=0 n=0 d=0 kv=
                case "$test" in
                pp) p=$PP ;;
                tg) n=$TG ;;
                tgd) n=$TG d=$DEPTH kv=--kv-f16 ;;
                *) die "TESTS: unknown test '$test' (pp tg tgd)" ;;
                esac
                for fmt in $FORMATS; do
                    case "$fmt" in *-int8 | *-q8_0) ref=gguf-q8_0 ;; *) ref=gguf-f16 ;; esac
                    f=$(model_file "$name" "$fmt")
                    g=$(model_file "$name" "$ref")
                    [ -s "$OUT/ab-$name-$fmt-t$t-$test.jsonl" ] && continue
                    wait_idle "ab $name $fmt t=$t $test" "$IDLE_MAX"
                    log "ab: $(basename "$f") vs llama.cpp $(basename "$g") t=$t $test, $ROUNDS rounds"
                    for r in $(seq "$ROUNDS"); do
                        "$BUILD/loupe" bench -m "$f" -p "$p" -n "$n" -d "$d" $kv -t "$t" -r 1 --json \
                            2>> "$OUT/bench.log" | "$PY" -c 'import json,sys; print(json.dumps({"engine": "loupe", "round": int(sys.argv[1]), **json.load(sys.stdin)[-1]}))' "$r"
                        "$LLAMA_BENCH" -m "$g" -p "$p" -n "$n" -d "$d" -t "$t" -r 1 -o json \
                            2>> "$OUT/bench.log" | "$PY" -c 'import json,sys; print(json.dumps({"engine": "llama.cpp", "round": int(sys.argv[1]), **json.load(sys.stdin)[-1]}))' "$r"
                    done > "$OUT/ab-$name-$fmt-t$t-$test.jsonl.part"
                    mv "$OUT/ab-$name-$fmt-t$t-$test.jsonl.part" "$OUT/ab-$name-$fmt-t$t-$test.jsonl"
                done
            done
        done
    done
}

# ------------------------------------------------------------ rss

# Peak RSS of a decode run: a short prompt, then TG tokens, 1 thread, the
# model's full context (so the KV cache is allocated at its largest).
step_rss() {
    local preset name fmt f
    for preset in $MODELS; do
        name=$(model_name "$preset")
        for fmt in $FORMATS; do
            f=$(model_file "$name" "$fmt")
            "$BUILD/loupe" info -m "$f" > "$OUT/info-$name-$fmt.txt" 2>&1
            log "peak RSS: loupe run $(basename "$f")"
            /usr/bin/time -v "$BUILD/loupe" run -m "$f" -p "Once upon a time" -n "$TG" \
                --temp 0 --ignore-eos -t 1 > /dev/null 2> "$OUT/rss-loupe-$name-$fmt.log"
            if [ -n "$LLAMA_BENCH" ] && [ "${fmt%%-*}" = gguf ]; then
                log "peak RSS: llama-bench $(basename "$f")"
                /usr/bin/time -v "$LLAMA_BENCH" -m "$f" -p 0 -n "$TG" -t 1 -r 1 \
                    > /dev/null 2> "$OUT/rss-llama-$name-$fmt.log"
            fi
        done
    done
}

# ------------------------------------------------------------ open

# loupe_model_open() time of every .loupe and .gguf file (cold and warm).
step_open() {
    local bin preset name fmt f
    bin=$(build_open_time)
    : > "$OUT/open.jsonl"
    for preset in $MODELS; do
        name=$(model_name "$preset")
        for fmt in $FORMATS; do
            f=$(model_file "$name" "$fmt")
            wait_idle "open $name $fmt"
            "$bin" "$f" 10 >> "$OUT/open.jsonl"
        done
    done
}

# ------------------------------------------------------------ busy

# Decode with and without core BUSY_CPU taken by `yes > /dev/null`: at 2
# threads (how each engine copes with a busy core), and loupe at 1 thread
# pinned to the other core (does a busy neighbour core slow a 1-thread run?).
busy_run() { # tag
    local preset name f other=$(( 1 - BUSY_CPU ))
    for preset in $MODELS; do
        name=$(model_name "$preset")
        f=$(model_file "$name" loupe-int8)
        if [ -s "$f" ]; then
            timed "busy-$1 loupe $name t=2" "$BUILD/loupe" bench -m "$f" -p 0 -n "$TG" -t 2 \
                -r "$REPS" --json > "$OUT/busy-$1-loupe-$name-loupe-int8.json" 2>> "$OUT/busy.log"
            timed "busy-$1 loupe $name t=1" taskset -c "$other" "$BUILD/loupe" bench -m "$f" \
                -p 0 -n "$TG" -t 1 -r "$REPS" --json \
                > "$OUT/busy-$1-loupe-$name-loupe-int8-t1.json" 2>> "$OUT/busy.log"
        fi
        f=$(model_file "$name" gguf-q8_0)
        if [ -n "$LLAMA_BENCH" ] && [ -s "$f" ]; then
            timed "busy-$1 llama.cpp $name t=2" "$LLAMA_BENCH" -m "$f" -p 0 -n "$TG" -t 2 \
                -r "$REPS" -o json > "$OUT/busy-$1-llama-$name-gguf-q8_0.json" 2>> "$OUT/busy.log"
        fi
    done
}

step_busy() {
    wait_idle "busy test (idle half)"
    log "busy test: idle machine"
    busy_run idle
    log "busy test: core $BUSY_CPU taken by yes > /dev/null"
    taskset -c "$BUSY_CPU" yes > /dev/null &
    local hog=$!
    trap 'kill "$hog" 2> /dev/null || true' EXIT
    busy_run busy
    kill "$hog"
    wait "$hog" 2> /dev/null || true
    trap - EXIT
}

# ------------------------------------------------------------ membw

build_membw() {
    mkdir -p "$MODELS_DIR/bin"
    cc -O3 -march=native -std=c11 -Wall -Wextra "$HERE/membw.c" -lpthread -o "$MODELS_DIR/bin/membw"
}

# DRAM read bandwidth at each thread count (bench/membw.c): the decode
# roofline's denominator, passed to the report.
step_membw() {
    local bin="$MODELS_DIR/bin/membw" t
    build_membw
    : > "$OUT/membw.jsonl"
    for t in ${THREADS//,/ }; do
        wait_idle "membw t=$t"
        "$bin" "$t" 1024 5 >> "$OUT/membw.jsonl"
    done
}

# ------------------------------------------------------------ roofline

# Decode against the bandwidth of the same minutes: ROUNDS rounds of membw
# (an anonymous buffer, then the model file's own mapping) then one decode
# repetition (tg TG) of loupe, and of llama.cpp on GGUF files when
# LLAMA_BENCH is set, at each thread count. This host's DRAM bandwidth
# drifts by up to 2x within minutes, so a roofline measured apart from the
# decode it bounds says little; the report takes each round's ratio. The
# file's pages can read slower than the anonymous buffer (a guest's page
# placement), hence the second reading (files of 1 GiB or more only).
step_roofline() {
    local preset name fmt f t r
    build_membw
    for preset in $MODELS; do
        name=$(model_name "$preset")
        for fmt in $FORMATS; do
            f=$(model_file "$name" "$fmt")
            [ -s "$OUT/info-$name-$fmt.txt" ] || "$BUILD/loupe" info -m "$f" > "$OUT/info-$name-$fmt.txt" 2>&1
            for t in ${THREADS//,/ }; do
                [ -s "$OUT/roof-$name-$fmt-t$t.jsonl" ] && continue
                wait_idle "roofline $name $fmt t=$t" "$IDLE_MAX"
                log "roofline: $(basename "$f") t=$t, $ROUNDS rounds"
                for r in $(seq "$ROUNDS"); do
                    "$MODELS_DIR/bin/membw" "$t" 1024 3 | "$PY" -c 'import json,sys; print(json.dumps({"engine": "membw", "round": int(sys.argv[1]), **json.load(sys.stdin)}))' "$r"
                    # a file smaller than membw's 1 GiB stays partly in the last-level cache
                    [ "$(stat -c %s "$f")" -ge 1073741824 ] &&
                        "$MODELS_DIR/bin/membw" "$t" 0 3 "$f" | "$PY" -c 'import json,sys; print(json.dumps({"engine": "filebw", "round": int(sys.argv[1]), **json.load(sys.stdin)}))' "$r"
                    "$BUILD/loupe" bench -m "$f" -p 0 -n "$TG" -t "$t" -r 1 --json \
                        2>> "$OUT/bench.log" | "$PY" -c 'import json,sys; print(json.dumps({"engine": "loupe", "round": int(sys.argv[1]), **json.load(sys.stdin)[-1]}))' "$r"
                    if [ -n "$LLAMA_BENCH" ] && [[ "$fmt" == gguf-* ]]; then
                        "$LLAMA_BENCH" -m "$f" -p 0 -n "$TG" -t "$t" -r 1 -o json \
                            2>> "$OUT/bench.log" | "$PY" -c 'import json,sys; print(json.dumps({"engine": "llama.cpp", "round": int(sys.argv[1]), **json.load(sys.stdin)[-1]}))' "$r"
                    fi
                done > "$OUT/roof-$name-$fmt-t$t.jsonl.part"
                mv "$OUT/roof-$name-$fmt-t$t.jsonl.part" "$OUT/roof-$name-$fmt-t$t.jsonl"
            done
        done
    done
}

# ------------------------------------------------------------ pool

# Round-trip cost of one thread-pool job (bench/pool_bench.c, linked
# against the static library: the pool is internal).
step_pool() {
    local bin="$MODELS_DIR/bin/pool_bench" t
    mkdir -p "$MODELS_DIR/bin"
    cc -O2 -std=c11 -Wall -Wextra -I"$REPO" "$HERE/pool_bench.c" "$BUILD/libloupe.a" \
        -lpthread -o "$bin"
    : > "$OUT/pool.jsonl"
    for t in ${THREADS//,/ }; do
        wait_idle "pool_bench t=$t"
        "$bin" "$t" 200000 8 >> "$OUT/pool.jsonl"
    done
}

# ------------------------------------------------------------ report

step_report() {
    "$PY" "$HERE/e2e_report.py" "$OUT" --models "$MODELS" --formats "$FORMATS" \
        --models-dir "$MODELS_DIR" --pp "$PP" --tg "$TG" --depth "$DEPTH" > "$OUT/report.md"
    cat "$OUT/report.md"
}

# ------------------------------------------------------------ main

{
    echo "date: $(date -Is)"
    echo "host: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cpus"
    echo "loupe: $("$BUILD/loupe" --version 2>/dev/null || echo unknown) ($BUILD)"
    echo "llama-bench: ${LLAMA_BENCH:-none}"
    echo "PP=$PP TG=$TG THREADS=$THREADS REPS=$REPS MODELS=$MODELS FORMATS=$FORMATS"
} >> "$OUT/run.txt"

for step in "${STEPS[@]}"; do
    case "$step" in
    prepare) for p in $MODELS; do prepare_model "$p"; done ;;
    bench) step_bench ;;
    ab) step_ab ;;
    rss) step_rss ;;
    open) step_open ;;
    membw) step_membw ;;
    roofline) step_roofline ;;
    pool) step_pool ;;
    busy) step_busy ;;
    report) step_report ;;
    *) die "unknown step '$step' (prepare membw bench ab roofline rss open pool busy report)" ;;
    esac
done
log "results in $OUT"
