// Drives `loupe serve` with the official openai npm client.
// env: LOUPE_BASE_URL (http://127.0.0.1:PORT/v1), LOUPE_API_KEY, LOUPE_GOLDEN
// (expected greedy text from BOS). Prints "ok - ..." / "not ok - ..." per
// check and a final "node: N passed, M failed" line; exits 1 on failure.
import { readFileSync } from "node:fs";
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.LOUPE_BASE_URL, apiKey: process.env.LOUPE_API_KEY, maxRetries: 0 });
let passed = 0, failed = 0;

function check(name, cond, detail) {
  if (cond) { passed++; console.log(`ok - ${name}`); }
  else { failed++; console.log(`not ok - ${name}${detail !== undefined ? ": " + JSON.stringify(detail).slice(0, 400) : ""}`); }
}

async function test(name, fn) {
  try { await fn(); }
  catch (e) { failed++; console.log(`not ok - ${name}: threw ${e && e.stack ? e.stack.split("\n").slice(0, 3).join(" | ") : e}`); }
}

const greedy = { model: "m", temperature: 0 };
const PROMPT = "Once upon a time";

await test("models", async () => {
  const list = await client.models.list();
  const ids = list.data.map((m) => m.id);
  check("models.list returns the served model", ids.length === 1 && typeof ids[0] === "string" && ids[0].length > 0, ids);
});

await test("completion golden", async () => {
  // An empty prompt is just BOS: greedy decoding must reproduce llama2.c's own output.
  const golden = readFileSync(process.env.LOUPE_GOLDEN, "utf8");
  const r = await client.completions.create({ ...greedy, prompt: "", max_tokens: 200 });
  const text = r.choices[0].text;
  check("greedy completion from BOS equals greedy-from-bos.txt", text.trimEnd() === golden.trimEnd(),
        { got: text.slice(0, 120), want: golden.slice(0, 120) });
  check("completion usage counts 200 tokens", r.usage.completion_tokens === 200 && r.usage.prompt_tokens === 1 &&
        r.usage.total_tokens === 201, r.usage);
  check("completion object shape", r.object === "text_completion" && r.id.startsWith("cmpl-") &&
        r.choices[0].finish_reason === "length" && r.choices[0].index === 0, r);
});

await test("completion stream", async () => {
  const ref = await client.completions.create({ ...greedy, prompt: PROMPT, max_tokens: 40 });
  const stream = await client.completions.create({ ...greedy, prompt: PROMPT, max_tokens: 40, stream: true,
                                                   stream_options: { include_usage: true } });
  let text = "", finish = null, chunks = 0, usage = null;
  for await (const c of stream) {
    chunks++;
    if (c.usage) usage = c.usage;
    for (const ch of c.choices) { text += ch.text; if (ch.finish_reason) finish = ch.finish_reason; }
  }
  check("streamed completion equals the non-streamed one", text === ref.choices[0].text, { text, ref: ref.choices[0].text });
  check("completion stream has many chunks and a finish reason", chunks > 5 && finish === "length", { chunks, finish });
  check("completion stream usage chunk", usage && usage.completion_tokens === 40 && usage.prompt_tokens === ref.usage.prompt_tokens, usage);
});

await test("completion logprobs", async () => {
  const r = await client.completions.create({ ...greedy, prompt: PROMPT, max_tokens: 12, logprobs: 3 });
  const lp = r.choices[0].logprobs;
  const n = r.usage.completion_tokens;
  check("logprobs arrays have one entry per token", lp.tokens.length === n && lp.token_logprobs.length === n &&
        lp.top_logprobs.length === n && lp.text_offset.length === n, lp);
  let ok = true;
  for (let i = 0; i < n; i++) {
    const top = lp.top_logprobs[i];
    const vals = Object.values(top);
    const best = Math.max(...vals);
    // greedy picks the most likely token: its logprob is the best of the alternatives
    if (!(lp.token_logprobs[i] <= 0 && Math.abs(lp.token_logprobs[i] - best) < 1e-5 && vals.length >= 3 &&
          vals.length <= 4 && lp.tokens[i] in top)) ok = false;
  }
  check("greedy tokens are the argmax of their top_logprobs", ok, lp);
  check("tokens concatenate to the text", lp.tokens.join("") === r.choices[0].text, { tokens: lp.tokens, text: r.choices[0].text });
  const sum = Object.values(lp.top_logprobs[0]).reduce((a, v) => a + Math.exp(v), 0);
  check("top probabilities sum to at most 1", sum <= 1.0001 && sum > 0, sum);
});

await test("completion echo, n, seed, stop", async () => {
  const e = await client.completions.create({ ...greedy, prompt: PROMPT, max_tokens: 5, echo: true, logprobs: 1 });
  const lp = e.choices[0].logprobs;
  check("echo prepends the prompt", e.choices[0].text.startsWith(PROMPT), e.choices[0].text);
  check("echo logprobs start with a null for the first prompt token", lp.token_logprobs[0] === null &&
        lp.top_logprobs[0] === null && lp.token_logprobs.slice(1).every((v) => v <= 0), lp.token_logprobs);
  const a = await client.completions.create({ model: "m", prompt: PROMPT, max_tokens: 20, temperature: 1, seed: 7, n: 3 });
  const b = await client.completions.create({ model: "m", prompt: PROMPT, max_tokens: 20, temperature: 1, seed: 7, n: 3 });
  check("n=3 gives three choices indexed 0..2", a.choices.length === 3 && a.choices.map((c) => c.index).join() === "0,1,2", a.choices);
  check("the same seed gives the same samples", JSON.stringify(a.choices.map((c) => c.text)) === JSON.stringify(b.choices.map((c) => c.text)));
  check("choices of one request differ", new Set(a.choices.map((c) => c.text)).size > 1, a.choices.map((c) => c.text));
  const s = await client.completions.create({ ...greedy, prompt: PROMPT, max_tokens: 60, stop: ["."] });
  check("a stop string ends the text before it", !s.choices[0].text.includes(".") && s.choices[0].finish_reason === "stop", s.choices[0]);
  const two = await client.completions.create({ ...greedy, prompt: [PROMPT, "The cat"], max_tokens: 8 });
  check("an array of prompts gives one choice each", two.choices.length === 2 && two.choices[0].text !== two.choices[1].text, two.choices);
});

await test("chat", async () => {
  const messages = [{ role: "system", content: "You tell stories." }, { role: "user", content: "Tell me about a cat." }];
  const r = await client.chat.completions.create({ ...greedy, messages, max_tokens: 30 });
  const c = r.choices[0];
  check("chat completion shape", r.object === "chat.completion" && r.id.startsWith("chatcmpl-") && c.message.role === "assistant" &&
        typeof c.message.content === "string" && c.message.content.length > 0 && ["stop", "length"].includes(c.finish_reason), r);
  const stream = await client.chat.completions.create({ ...greedy, messages, max_tokens: 30, stream: true,
                                                        stream_options: { include_usage: true } });
  let first = null, text = "", finish = null, usage = null, after_finish = 0;
  for await (const ch of stream) {
    if (ch.usage) usage = ch.usage;
    for (const x of ch.choices) {
      if (first === null) first = x.delta;
      if (x.delta.content) text += x.delta.content;
      if (finish) after_finish++;
      if (x.finish_reason) finish = x.finish_reason;
    }
  }
  check("first chat chunk carries the assistant role", first && first.role === "assistant", first);
  check("streamed chat equals the non-streamed answer", text === c.message.content, { text, want: c.message.content });
  check("chat stream ends with finish_reason and a usage chunk", finish === c.finish_reason && after_finish === 0 && usage &&
        usage.completion_tokens === r.usage.completion_tokens && usage.prompt_tokens === r.usage.prompt_tokens, { finish, usage });
});

await test("chat logprobs", async () => {
  const r = await client.chat.completions.create({ ...greedy, messages: [{ role: "user", content: "Hi" }], max_tokens: 10,
                                                   logprobs: true, top_logprobs: 5 });
  const content = r.choices[0].logprobs.content;
  check("one logprob entry per answer token", r.choices[0].finish_reason === "length" &&
        content.length === r.usage.completion_tokens, { n: content.length, usage: r.usage });
  let ok = true;
  for (const t of content) {
    const tops = t.top_logprobs;
    const sorted = tops.every((x, i) => i === 0 || tops[i - 1].logprob >= x.logprob);
    if (!(tops.length === 5 && sorted && Math.abs(tops[0].logprob - t.logprob) < 1e-5 && tops[0].token === t.token &&
          Buffer.from(t.bytes).toString("utf8") === t.token)) ok = false;
  }
  check("top_logprobs: 5, sorted, greedy token first, bytes match", ok, content[0]);
  check("chat tokens concatenate to the content", content.map((t) => t.token).join("") === r.choices[0].message.content);
});

await test("errors through the client", async () => {
  try {
    await client.chat.completions.create({ model: "m", messages: [{ role: "user", content: "x" }], temperature: 5 });
    check("temperature 5 is refused", false);
  } catch (e) {
    check("temperature 5 is refused with 400 naming the parameter", e.status === 400 && e.error && e.error.param === "temperature", e.error);
  }
  const bad = new OpenAI({ baseURL: process.env.LOUPE_BASE_URL, apiKey: "wrong-key", maxRetries: 0 });
  try {
    await bad.models.list();
    check("a wrong key is refused", false);
  } catch (e) {
    check("a wrong key gives 401", e.status === 401 && e.error && e.error.code === "invalid_api_key", e.error);
  }
});

console.log(`node: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
