#!/usr/bin/env bash
# server_interp_test.sh — end-to-end tests of `loupe serve`'s interpretability
# endpoints (POST /v1/loupe/attention, /lens, /attribute) on stories260K and
# slm-gpt2-char (loopback only):
#   1. every answer equals (as parsed JSON) the document the CLI writes with
#      `loupe attention|lens|attribute ... -o FILE.json` for the same model
#      and parameters
#   2. every error path: auth, routes, JSON, body size, types, selections,
#      methods, ranges, context and size limits — status and OpenAI envelope
#   3. generation after interp jobs is unchanged (the slot's hooks come back)
#   4. the queue (503 + Retry-After), cancellation of a client that
#      disconnects during a long attribution, SIGTERM during one (503, exit 0)
# Env (set by ctest): LOUPE_BIN, LOUPE_SHARED, LOUPE_TEST_TMP.
# Ends with "N passed, N failed"; exit status 1 on any failure.
set -u

BIN=${LOUPE_BIN:-$(pwd)}/loupe
SHARED=${LOUPE_SHARED:-$(dirname "$0")/../../shared}
TMP=${LOUPE_TEST_TMP:-/tmp}/server_interp_test.$$
STORIES=$SHARED/models/stories260K/stories260K.gguf
GPT2=$SHARED/models/slm-gpt2-char
KEY=test-key-$$
mkdir -p "$TMP"

pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok - $1"; }
bad() { fail=$((fail + 1)); echo "not ok - $1${2:+: $2}"; }
check() { if eval "$2"; then ok "$1"; else bad "$1" "${3:-}"; fi; }

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT

command -v curl >/dev/null || { echo "server_interp_test: curl is not installed (tools/setup-deps.sh)"; exit 1; }
[ -x "$BIN" ] || { echo "server_interp_test: $BIN not built"; exit 1; }

# start_server NAME MODEL ARGS...: sets SRV_PID, URL and MODEL; the log is $TMP/NAME.log
start_server() {
  local name=$1
  MODEL=$2
  shift 2
  "$BIN" serve -m "$MODEL" --host 127.0.0.1 --port 0 "$@" 2>"$TMP/$name.log" &
  SRV_PID=$!
  PIDS+=("$SRV_PID")
  for _ in $(seq 100); do # the whole line: "listening on http://127.0.0.1:PORT (model ..."
    grep -q "listening on http://127\.0\.0\.1:[0-9]* (" "$TMP/$name.log" 2>/dev/null && break
    sleep 0.1
  done
  URL=http://$(grep -o '127\.0\.0\.1:[0-9]* (' "$TMP/$name.log" | head -1 | cut -d' ' -f1)
  [ "$URL" != "http://" ] || { echo "server $name did not start:"; cat "$TMP/$name.log"; exit 1; }
}

# stop_server PID: SIGTERM, sets STATUS to the exit status
stop_server() {
  kill -TERM "$1"
  wait "$1"
  STATUS=$?
}

# req METHOD PATH [BODY] [curl args...]: sets CODE, BODY, HDRS
req() {
  local method=$1 path=$2 body=${3:-}
  shift 3 2>/dev/null || shift $#
  local args=(-s -X "$method" -D "$TMP/h" -o "$TMP/b" -w '%{http_code}' "$@")
  [ -n "$body" ] && args+=(--data-binary "$body")
  CODE=$(curl "${args[@]}" "$URL$path")
  BODY=$(cat "$TMP/b")
  HDRS=$(cat "$TMP/h")
}
AUTH=(-H "Authorization: Bearer $KEY")

# The OpenAI error envelope: exactly error.{message,type,param,code}.
envelope() {
  printf '%s' "$BODY" | python3 -c '
import json, sys
e = json.load(sys.stdin)["error"]
assert sorted(e) == ["code", "message", "param", "type"] and e["message"] and e["type"], e
want_code, want_param = sys.argv[1], sys.argv[2]
assert want_code == "-" or e["code"] == want_code, e
assert want_param == "-" or e["param"] == (None if want_param == "null" else want_param), e' "${1:--}" "${2:--}" 2>/dev/null
}

jq_py() { printf '%s' "$BODY" | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }

json_equal() { python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1])) != json.load(open(sys.argv[2])))' "$1" "$2" 2>/dev/null; }

# A JSON object from KEY=STRING and KEY:=JSON arguments.
body() {
  python3 -c '
import json, sys
d = {}
for kv in sys.argv[1:]:
    k, v = kv.split("=", 1)
    if k.endswith(":"):
        d[k[:-1]] = json.loads(v)
    else:
        d[k] = v
print(json.dumps(d))' "$@"
}

# same_as_cli WHAT ENDPOINT JSON CLI-ARGS...: the endpoint's answer to JSON
# equals `loupe ENDPOINT -m MODEL CLI-ARGS -o FILE.json`.
same_as_cli() {
  local what=$1 ep=$2 json=$3
  shift 3
  req POST "/v1/loupe/$ep" "$json" "${AUTH[@]}"
  cp "$TMP/b" "$TMP/srv.json"
  rm -f "$TMP/cli.json"
  "$BIN" "$ep" -m "$MODEL" "$@" -o "$TMP/cli.json" >"$TMP/cli.out" 2>&1
  check "$what" '[ "$CODE" = 200 ] && [ -s "$TMP/cli.json" ] && json_equal "$TMP/srv.json" "$TMP/cli.json"' \
    "$CODE $(head -c 300 "$TMP/b") | cli: $(head -c 300 "$TMP/cli.out")"
}

# ------------------------------------------------- 1. answers equal the CLI's
start_server main "$STORIES" --parallel 1 --queue 4 --ctx 1024 --api-key "$KEY" --max-body 65536
MAIN_PID=$SRV_PID

# a greedy completion's logprobs equal `loupe run`'s, before any interp job
# and after them (section 3: the slot registers its logits hook again)
GEN='{"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "logprobs": 3}'
"$BIN" run -m "$STORIES" -p "Once upon a time" -n 12 --temp 0 --logprobs 3 --logprobs-json "$TMP/run.json" \
  >/dev/null 2>&1
same_logprobs() {
  printf '%s' "$BODY" | python3 -c '
import json, sys
got = json.load(sys.stdin)["choices"][0]["logprobs"]["token_logprobs"]
want = [t["logprob"] for t in json.load(open(sys.argv[1]))["tokens"]]
sys.exit(not (len(got) == len(want) == 12 and all(abs(a - b) < 1e-4 for a, b in zip(got, want))))' "$TMP/run.json" 2>/dev/null
}
req POST /v1/completions "$GEN" "${AUTH[@]}"
check "before interp jobs, a greedy completion's logprobs equal loupe run's" '[ "$CODE" = 200 ] && same_logprobs' "$BODY"

P="Once upon a time, there was a little girl"
same_as_cli "stories260K attention, every layer and head" attention "$(body "prompt=$P")" -p "$P" -q
same_as_cli "stories260K attention, layers 0,2-4 heads 1,3-5" attention \
  "$(body "prompt=$P" layers=0,2-4 heads=1,3-5)" -p "$P" --layers 0,2-4 --heads 1,3-5 -q
same_as_cli "stories260K attention, layers all heads 7" attention "$(body "prompt=$P" layers=all heads=7)" \
  -p "$P" --layers all --heads 7 -q
same_as_cli "stories260K attention of a prompt with special-token texts" attention "$(body "prompt=<s> The dog</s>")" \
  -p "<s> The dog</s>" -q
same_as_cli "stories260K lens, default k (5, as -o without -k)" lens "$(body "prompt=$P")" -p "$P" -q
same_as_cli "stories260K lens, k 3" lens "$(body "prompt=$P" k:=3)" -p "$P" -k 3 -q
same_as_cli "stories260K lens of the empty prompt (BOS only)" lens "$(body prompt=)" -p "" -q
same_as_cli "stories260K attribute, default method (occlusion)" attribute "$(body "prompt=$P" "target= who")" \
  -p "$P" --target " who"
same_as_cli "stories260K attribute, shapley 10 samples seed 7" attribute \
  "$(body "prompt=$P" "target= who liked" method=shapley samples:=10 seed:=7)" \
  -p "$P" --target " who liked" --method shapley --samples 10 --seed 7
same_as_cli "stories260K attribute, shapley exact (4 players, 24 samples)" attribute \
  "$(body "prompt=Once upon a time" "target= there" method=shapley samples:=24)" \
  -p "Once upon a time" --target " there" --method shapley --samples 24
same_as_cli "stories260K attribute, rollout" attribute "$(body "prompt=$P" "target= who liked" method=rollout)" \
  -p "$P" --target " who liked" --method rollout
same_as_cli "stories260K attribute of the empty prompt (BOS, no players)" attribute "$(body prompt= target=Once)" \
  -p "" --target "Once"
req POST /v1/loupe/attention "$(body "prompt=$P" layers=1 heads=2)" "${AUTH[@]}"
check "the attention document names the served model and has shape (1, 1, T, T)" \
  '[ "$(jq_py "d[\"model\"], d[\"shape\"][:2], len(d[\"attention\"][0][0]) == d[\"shape\"][2]")" = "stories260K.gguf [1, 1] True" ]' "$BODY"

# --------------------------------------------------- 2. errors (stories260K)
for ep in attention lens attribute; do
  req POST /v1/loupe/$ep '{"prompt": "x", "target": "y"}'
  check "$ep without the key: 401" '[ "$CODE" = 401 ] && envelope invalid_api_key' "$CODE $BODY"
  req GET /v1/loupe/$ep "" "${AUTH[@]}"
  check "GET $ep: 405" '[ "$CODE" = 405 ] && envelope method_not_allowed' "$CODE $BODY"
  req POST /v1/loupe/$ep '{"prompt": "x", ' "${AUTH[@]}"
  check "$ep, malformed JSON: 400" '[ "$CODE" = 400 ] && envelope invalid_json' "$CODE $BODY"
  req POST /v1/loupe/$ep '["prompt"]' "${AUTH[@]}"
  check "$ep, JSON that is not an object: 400" '[ "$CODE" = 400 ] && envelope invalid_json' "$CODE $BODY"
  req POST /v1/loupe/$ep '{}' "${AUTH[@]}"
  check "$ep without a prompt: 400" '[ "$CODE" = 400 ] && envelope missing_required_parameter prompt' "$CODE $BODY"
  req POST /v1/loupe/$ep '{"prompt": "x", "target": "y", "stream": true}' "${AUTH[@]}"
  check "$ep with an unknown parameter: 400" '[ "$CODE" = 400 ] && envelope unknown_parameter null' "$CODE $BODY"
done
req POST /v1/loupe/nope '{"prompt": "x"}' "${AUTH[@]}"
check "unknown /v1/loupe/ route: 404" '[ "$CODE" = 404 ] && envelope not_found' "$CODE $BODY"
python3 -c 'print("{\"prompt\": \"" + "a" * 70000 + "\"}")' >"$TMP/big.json"
req POST /v1/loupe/lens "" "${AUTH[@]}" --data-binary @"$TMP/big.json"
check "body over --max-body: 400" '[ "$CODE" = 400 ] && envelope request_too_large' "$CODE $BODY"
req POST /v1/loupe/lens '{"prompt": "x", "model": "anything"}' "${AUTH[@]}"
check "'model' is accepted and ignored" '[ "$CODE" = 200 ]' "$CODE $BODY"
while IFS='|' read -r ep json param what; do
  req POST "/v1/loupe/$ep" "$json" "${AUTH[@]}"
  check "$ep, $what: 400 invalid_value naming $param" '[ "$CODE" = 400 ] && envelope invalid_value "$param"' "$CODE $BODY"
done <<'EOF'
attention|{"prompt": 7}|prompt|prompt as a number
attention|{"prompt": ["x"]}|prompt|prompt as an array
attention|{"prompt": "x", "layers": 3}|layers|layers as a number
attention|{"prompt": "x", "layers": "1-"}|layers|layers with bad syntax
attention|{"prompt": "x", "layers": "a,b"}|layers|layers that are not numbers
attention|{"prompt": "x", "layers": "5"}|layers|layer 5 of 5
attention|{"prompt": "x", "layers": "3-1"}|layers|a reversed range
attention|{"prompt": "x", "heads": "0-8"}|heads|head 8 of 8
lens|{"prompt": "x", "k": 0}|k|k 0
lens|{"prompt": "x", "k": 101}|k|k 101
lens|{"prompt": "x", "k": 2.5}|k|k 2.5
lens|{"prompt": "x", "k": "3"}|k|k as a string
attribute|{"prompt": "x", "target": "y", "method": "lime"}|method|unknown method
attribute|{"prompt": "x", "target": "y", "method": 1}|method|method as a number
attribute|{"prompt": "x", "target": ""}|target|empty target
attribute|{"prompt": "x", "target": 5}|target|target as a number
attribute|{"prompt": "x", "target": "y", "samples": 0}|samples|samples 0
attribute|{"prompt": "x", "target": "y", "samples": 10001}|samples|samples over the limit
attribute|{"prompt": "x", "target": "y", "seed": -1}|seed|negative seed
attribute|{"prompt": "x", "target": "y", "seed": 0.5}|seed|fractional seed
EOF
req POST /v1/loupe/attribute '{"prompt": "x"}' "${AUTH[@]}"
check "attribute without a target: 400" '[ "$CODE" = 400 ] && envelope missing_required_parameter target' "$CODE $BODY"

LONG=$(python3 -c 'print(("Once upon a time " * 300).strip())') # BOS + 1200 tokens > ctx 1024
MID=$(python3 -c 'print(("Once upon a time " * 200).strip())')  # BOS + 800 tokens
TGT=$(python3 -c 'print(" and the dog" * 100)')             # 401 tokens
for ep in attention lens; do
  req POST /v1/loupe/$ep "$(body "prompt=$LONG")" "${AUTH[@]}"
  check "$ep, prompt longer than the context: 400" '[ "$CODE" = 400 ] && envelope context_length_exceeded prompt' "$CODE $BODY"
done
req POST /v1/loupe/attribute "$(body "prompt=$LONG" target=y)" "${AUTH[@]}"
check "attribute, prompt longer than the context: 400" '[ "$CODE" = 400 ] && envelope context_length_exceeded prompt' "$CODE $BODY"
req POST /v1/loupe/attribute "$(body "prompt=$MID" "target=$TGT")" "${AUTH[@]}"
check "attribute, prompt + target longer than the context: 400" \
  '[ "$CODE" = 400 ] && envelope context_length_exceeded target' "$CODE $BODY"
# 5 layers x 8 heads x 801^2 = 25.7 M weights > the cap of 16,777,216
req POST /v1/loupe/attention "$(body "prompt=$MID")" "${AUTH[@]}"
check "attention of 801 tokens in every layer: 400 too_many_tokens" \
  '[ "$CODE" = 400 ] && envelope too_many_tokens prompt' "$CODE $BODY"
req POST /v1/loupe/attribute "$(body "prompt=$MID" "target= and" method=rollout)" "${AUTH[@]}"
check "rollout over 801 positions: 400 too_many_tokens" '[ "$CODE" = 400 ] && envelope too_many_tokens target' "$CODE $BODY"
# one layer: 8 x 801^2 = 5.1 M weights is under it
req POST /v1/loupe/attention "$(body "prompt=$MID" layers=4 heads=0)" "${AUTH[@]}"
check "attention of 801 tokens in one layer: 200, shape (1, 1, 801, 801)" \
  '[ "$CODE" = 200 ] && [ "$(jq_py "d[\"shape\"]")" = "[1, 1, 801, 801]" ]' "$CODE $(head -c 300 "$TMP/b")"

# ------------------------------------------- 3. generation after interp jobs
req POST /v1/completions "$GEN" "${AUTH[@]}"
check "after interp jobs, a greedy completion's logprobs still equal loupe run's" \
  '[ "$CODE" = 200 ] && same_logprobs' "$BODY"
stop_server "$MAIN_PID"
check "the server exits 0 after SIGTERM" '[ $STATUS = 0 ]' "status $STATUS: $(tail -5 "$TMP/main.log")"

# ------------------------------------------------------- slm-gpt2-char (ctx 128)
start_server gpt2 "$GPT2" --api-key "$KEY"
GPT2_PID=$SRV_PID
Q=$'Q: What is SLM?\nA:'
same_as_cli "slm-gpt2-char attention" attention "$(body "prompt=$Q")" -p "$Q" -q
same_as_cli "slm-gpt2-char attention, layers 1-2 heads 0,3" attention "$(body "prompt=$Q" layers=1-2 heads=0,3)" \
  -p "$Q" --layers 1-2 --heads 0,3 -q
same_as_cli "slm-gpt2-char lens, k 4" lens "$(body "prompt=$Q" k:=4)" -p "$Q" -k 4 -q
same_as_cli "slm-gpt2-char attribute, occlusion" attribute "$(body "prompt=$Q" "target= SLM is")" \
  -p "$Q" --target " SLM is"
same_as_cli "slm-gpt2-char attribute, shapley 8 samples seed 3" attribute \
  "$(body "prompt=$Q" "target= SLM" method=shapley samples:=8 seed:=3)" \
  -p "$Q" --target " SLM" --method shapley --samples 8 --seed 3
same_as_cli "slm-gpt2-char attribute, rollout" attribute "$(body "prompt=$Q" "target= SLM" method=rollout)" \
  -p "$Q" --target " SLM" --method rollout
req POST /v1/loupe/lens '{"prompt": ""}' "${AUTH[@]}"
check "slm-gpt2-char: an empty prompt (no BOS) is 400" '[ "$CODE" = 400 ] && envelope invalid_value prompt' "$CODE $BODY"
req POST /v1/loupe/attribute '{"prompt": "A", "target": "\u00e9"}' "${AUTH[@]}"
check "slm-gpt2-char: a target with no known character is 400" '[ "$CODE" = 400 ] && envelope invalid_value target' "$CODE $BODY"
req POST /v1/loupe/attention "$(body "prompt=$(python3 -c 'print("a" * 129)')")" "${AUTH[@]}"
check "slm-gpt2-char: 129 tokens > ctx 128: 400" '[ "$CODE" = 400 ] && envelope context_length_exceeded prompt' "$CODE $BODY"
req POST /v1/loupe/attention "$(body "prompt=$(python3 -c 'print("a" * 128)')")" "${AUTH[@]}"
check "slm-gpt2-char: 128 tokens = ctx: 200" '[ "$CODE" = 200 ]' "$CODE $(head -c 300 "$TMP/b")"
req POST /v1/loupe/attribute "$(body "prompt=$(python3 -c 'print("a" * 120)')" "target=$(python3 -c 'print("b" * 9)')")" "${AUTH[@]}"
check "slm-gpt2-char: prompt + target of 129 tokens: 400" \
  '[ "$CODE" = 400 ] && envelope context_length_exceeded target' "$CODE $BODY"
stop_server "$GPT2_PID"
check "the slm-gpt2-char server exits 0 after SIGTERM" '[ $STATUS = 0 ]' "status $STATUS: $(tail -5 "$TMP/gpt2.log")"

# ------------------------------------------- 4. queue, cancel, SIGTERM
health_field() { curl -s "$URL/health" | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
wait_health() { # FIELD VALUE TIMEOUT_S
  for _ in $(seq $(($3 * 20))); do
    [ "$(health_field "$1")" = "$2" ] && return 0
    sleep 0.05
  done
  return 1
}
start_server queue "$STORIES" --parallel 1 --queue 0 --ctx 512 --drain-timeout 1
QUEUE_PID=$SRV_PID
# ~49 Shapley players x 10000 orders: minutes of work, so it is still running
SLOW=$(body "prompt=$(python3 -c 'print("Once upon a time there was a little girl " * 6)')" "target= there" \
  method=shapley samples:=10000)
curl -s -o /dev/null -d "$SLOW" "$URL/v1/loupe/attribute" &
A=$!
PIDS+=("$A")
check "a long attribution occupies the slot" 'wait_health slots_busy 1 5'
req POST /v1/loupe/lens '{"prompt": "Once"}'
check "slot busy, no queue: 503 server_busy with Retry-After" \
  '[ "$CODE" = 503 ] && envelope server_busy && grep -qi "^Retry-After: 1" <<<"$HDRS"' "$CODE $BODY"
kill "$A"
check "a client that disconnects cancels its attribution: the slot is free within 2 s" 'wait_health slots_busy 0 2'
req POST /v1/loupe/lens '{"prompt": "Once"}'
check "the slot answers the next request" '[ "$CODE" = 200 ] && [ "$(jq_py "d[\"format\"]")" = loupe-lens ]' "$CODE $BODY"
curl -s -o "$TMP/e.out" -w '%{http_code}' -d "$SLOW" "$URL/v1/loupe/attribute" >"$TMP/e.code" &
E=$!
wait_health slots_busy 1 5
t0=$(date +%s.%N)
stop_server "$QUEUE_PID"
t1=$(date +%s.%N)
wait "$E"
check "SIGTERM during a long attribution: exit 0 within the drain timeout" \
  '[ $STATUS = 0 ] && python3 -c "import sys; sys.exit(not ($t1 - $t0 < 3.0))"' "status $STATUS, $(python3 -c "print($t1 - $t0)")s"
BODY=$(cat "$TMP/e.out")
check "the cancelled attribution gets 503 in the envelope" \
  '[ "$(cat "$TMP/e.code")" = 503 ] && envelope server_shutting_down' "$(cat "$TMP/e.code") $BODY"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
