#!/usr/bin/python3
"""make_seeds.py — writes the starting corpora of the fuzz targets.

  make_seeds.py OUT_DIR

OUT_DIR/<target>/ gets small valid inputs (tiny models with random weights,
real config.json files, small tokenizer.json files, texts) so that
mutations start deep inside each reader. Nothing here is committed: .ci/fuzz.sh
runs this at the start of every run. The .loupe seeds are made by fuzz.sh
with the quantize tool from OUT_DIR/fuzz_gguf/*.gguf.

The tiny Hugging Face configs must match tests/fuzz/fuzz_safetensors.c.
"""
import glob
import json
import os
import struct
import sys

import numpy as np

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, "tests", "ref"))
import safetensors_np  # noqa: E402
from gguf_np import write_gguf, quantize_q8_0, T_F32, T_F16, T_Q8_0  # noqa: E402

SHARED = os.environ.get("LOUPE_SHARED") or os.path.join(os.path.dirname(SRC), "shared")
RNG = np.random.default_rng(7)
V_U32, V_I32, V_F32, V_BOOL, V_STR, V_ARR = 4, 5, 6, 7, 8, 9


def randn(*shape):
    return (RNG.standard_normal(shape) * 0.5).astype(np.float32)


def put(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

# ------------------------------------------------------------------ GGUF


def spm_vocab():
    """A 16-token SentencePiece-style vocabulary: specials, bytes, pieces."""
    toks = ["<unk>", "<s>", "</s>", "<0x0A>", "<0x20>", "<0xC3>", "<0xA9>",
            "\u2581", "\u2581H", "e", "l", "o", "\u2581w", "H", "w", "ll"]
    types = [2, 3, 3, 6, 6, 6, 6] + [1] * 9
    scores = [0.0] * 7 + [-float(i) for i in range(9)]
    return toks, types, scores


def bpe_vocab():
    toks = ["\u0120", "H", "e", "l", "o", "w", "r", "d", "ll", "\u0120w", "a", "b", "c",
            "\u010a", "<|im_start|>", "<|endoftext|>"]
    types = [1] * 14 + [3, 3]
    return toks, types, ["l l", "\u0120 w"]


def tok_kvs(kind):
    if kind == "llama":
        toks, types, scores = spm_vocab()
        return [("tokenizer.ggml.model", V_STR, b"llama"),
                ("tokenizer.ggml.tokens", V_ARR, (V_STR, [t.encode() for t in toks])),
                ("tokenizer.ggml.scores", V_ARR, (V_F32, scores)),
                ("tokenizer.ggml.token_type", V_ARR, (V_I32, types)),
                ("tokenizer.ggml.bos_token_id", V_U32, 1),
                ("tokenizer.ggml.eos_token_id", V_U32, 2),
                ("tokenizer.ggml.add_bos_token", V_BOOL, True)]
    toks, types, merges = bpe_vocab()
    tmpl = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
            "<|endoftext|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>"
            "assistant\n{% endif %}")
    return [("tokenizer.ggml.model", V_STR, b"gpt2"),
            ("tokenizer.ggml.pre", V_STR, b"qwen2"),
            ("tokenizer.ggml.tokens", V_ARR, (V_STR, [t.encode() for t in toks])),
            ("tokenizer.ggml.token_type", V_ARR, (V_I32, types)),
            ("tokenizer.ggml.merges", V_ARR, (V_STR, [m.encode() for m in merges])),
            ("tokenizer.ggml.eos_token_id", V_U32, 15),
            ("tokenizer.chat_template", V_STR, tmpl.encode())]


def gguf_model(path, arch, C=8, H=2, KV=1, F=16, V=16, ctx=8, qtype=T_F32, tied=False):
    hd = C // H
    kv = [("general.architecture", V_STR, arch.encode()),
          ("general.alignment", V_U32, 32),
          (arch + ".context_length", V_U32, ctx), (arch + ".embedding_length", V_U32, C),
          (arch + ".block_count", V_U32, 1), (arch + ".feed_forward_length", V_U32, F),
          (arch + ".attention.head_count", V_U32, H),
          (arch + ".attention.head_count_kv", V_U32, KV)]
    if arch == "gpt2":
        kv.append((arch + ".attention.layer_norm_epsilon", V_F32, 1e-5))
    else:
        kv += [(arch + ".attention.layer_norm_rms_epsilon", V_F32, 1e-6),
               (arch + ".rope.freq_base", V_F32, 10000.0),
               (arch + ".rope.dimension_count", V_U32, hd)]
    kv += tok_kvs("llama" if arch == "llama" else "gpt2")
    tensors = []

    def add(name, x, t=T_F32):
        if x.ndim == 2 and t == T_Q8_0:
            raw = quantize_q8_0(x)
        elif x.ndim == 2 and t == T_F16:
            raw = x.astype("<f2").tobytes()
        else:
            raw, t = x.astype("<f4").tobytes(), T_F32
        tensors.append((name, t, list(reversed(x.shape)), raw))
    add("token_embd.weight", randn(V, C), qtype)
    if arch == "gpt2":
        add("position_embd.weight", randn(ctx, C))
        add("output_norm.bias", randn(C))
    add("output_norm.weight", randn(C))
    if not tied:
        add("output.weight", randn(V, C), qtype)
    Q, K = H * hd, KV * hd
    p = "blk.0."
    add(p + "attn_norm.weight", randn(C))
    if arch == "gpt2":  # fused, as llama.cpp's converter writes GPT-2
        add(p + "attn_qkv.weight", randn(Q + 2 * K, C), qtype)
        add(p + "attn_qkv.bias", randn(Q + 2 * K))
    else:
        add(p + "attn_q.weight", randn(Q, C), qtype)
        add(p + "attn_k.weight", randn(K, C), qtype)
        add(p + "attn_v.weight", randn(K, C), qtype)
    if arch == "qwen2":
        add(p + "attn_q.bias", randn(Q))
        add(p + "attn_k.bias", randn(K))
        add(p + "attn_v.bias", randn(K))
    add(p + "attn_output.weight", randn(C, Q), qtype)
    add(p + "ffn_norm.weight", randn(C))
    if arch != "gpt2":
        add(p + "ffn_gate.weight", randn(F, C), qtype)
    add(p + "ffn_up.weight", randn(F, C), qtype)
    add(p + "ffn_down.weight", randn(C, F), qtype)
    if arch == "gpt2":
        for n, x in [("attn_norm.bias", C), ("attn_output.bias", C), ("ffn_norm.bias", C),
                     ("ffn_up.bias", F), ("ffn_down.bias", C)]:
            add(p + n, randn(x))
    write_gguf(path, kv, tensors)


def gguf_seeds(out):
    d = os.path.join(out, "fuzz_gguf")
    os.makedirs(d, exist_ok=True)
    gguf_model(os.path.join(d, "llama-f32.gguf"), "llama")
    gguf_model(os.path.join(d, "qwen2-f16-tied.gguf"), "qwen2", qtype=T_F16, tied=True)
    gguf_model(os.path.join(d, "gpt2-f32.gguf"), "gpt2", H=2, KV=2)
    gguf_model(os.path.join(d, "llama-q8.gguf"), "llama", C=32, H=4, KV=2, F=32,
               qtype=T_Q8_0)

# ------------------------------------------------------------ safetensors

GPT2 = dict(V=16, C=8, F=16, ctx=8)
LLAMA = dict(V=16, C=8, H=2, KV=1, F=16)


def st_gpt2(prefix):
    V, C, F, ctx = GPT2["V"], GPT2["C"], GPT2["F"], GPT2["ctx"]
    p = "transformer." if prefix else ""
    t = {p + "wte.weight": randn(V, C), p + "wpe.weight": randn(ctx, C),
         p + "ln_f.weight": randn(C), p + "ln_f.bias": randn(C)}
    h = p + "h.0."
    t.update({h + "ln_1.weight": randn(C), h + "ln_1.bias": randn(C),
              h + "attn.c_attn.weight": randn(C, 3 * C), h + "attn.c_attn.bias": randn(3 * C),
              h + "attn.c_proj.weight": randn(C, C), h + "attn.c_proj.bias": randn(C),
              h + "ln_2.weight": randn(C), h + "ln_2.bias": randn(C),
              h + "mlp.c_fc.weight": randn(C, F), h + "mlp.c_fc.bias": randn(F),
              h + "mlp.c_proj.weight": randn(F, C), h + "mlp.c_proj.bias": randn(C)})
    return t


def st_llama():
    V, C, H, KV, F = LLAMA["V"], LLAMA["C"], LLAMA["H"], LLAMA["KV"], LLAMA["F"]
    hd = C // H
    L = "model.layers.0."
    return {"model.embed_tokens.weight": randn(V, C), "model.norm.weight": randn(C),
            "lm_head.weight": randn(V, C),
            L + "input_layernorm.weight": randn(C),
            L + "self_attn.q_proj.weight": randn(H * hd, C),
            L + "self_attn.k_proj.weight": randn(KV * hd, C),
            L + "self_attn.v_proj.weight": randn(KV * hd, C),
            L + "self_attn.o_proj.weight": randn(C, H * hd),
            L + "post_attention_layernorm.weight": randn(C),
            L + "mlp.gate_proj.weight": randn(F, C),
            L + "mlp.up_proj.weight": randn(F, C),
            L + "mlp.down_proj.weight": randn(C, F)}


def st_bytes(tensors, dtype):
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), "fuzz-seed-%d.st" % os.getpid())
    safetensors_np.write_file(tmp, tensors, dtype=dtype, metadata={"format": "pt"})
    with open(tmp, "rb") as f:
        b = f.read()
    os.unlink(tmp)
    return b


def safetensors_seeds(out):
    put(out, "fuzz_safetensors", "gpt2-f32", b"\0" + st_bytes(st_gpt2(False), "F32"))
    put(out, "fuzz_safetensors", "gpt2-bf16-prefix",
        b"\0" + st_bytes(st_gpt2(True), "BF16"))
    put(out, "fuzz_safetensors", "llama-f32", b"\1" + st_bytes(st_llama(), "F32"))
    put(out, "fuzz_safetensors", "llama-f16", b"\1" + st_bytes(st_llama(), "F16"))

# ------------------------------------------------------------ JSON inputs


def config_seeds(out):
    for i, p in enumerate(sorted(glob.glob(os.path.join(SHARED, "models", "hf", "*",
                                                        "config.json")))):
        with open(p, "rb") as f:
            cfg = f.read()
        gen = os.path.join(os.path.dirname(p), "generation_config.json")
        if os.path.exists(gen):
            with open(gen, "rb") as f:
                cfg += b"\0" + f.read()
        put(out, "fuzz_config_json", "real-%d.json" % i, cfg)
    put(out, "fuzz_config_json", "llama3-rope.json", json.dumps({
        "model_type": "llama", "vocab_size": 16, "hidden_size": 8, "num_attention_heads": 2,
        "num_key_value_heads": 1, "num_hidden_layers": 1, "intermediate_size": 16,
        "head_dim": 4, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 16},
        "eos_token_id": [1, 2]}))
    put(out, "fuzz_config_json", "qwen2-window.json", json.dumps({
        "model_type": "qwen2", "vocab_size": 16, "hidden_size": 8, "num_attention_heads": 2,
        "num_hidden_layers": 1, "intermediate_size": 16, "use_sliding_window": True,
        "sliding_window": 4, "rope_scaling": {"type": "linear", "factor": 2.0}}))


def tokenizer_json_seeds(out):
    src = [os.path.join(SHARED, "models", "slm-gpt2-char", "tokenizer.json")]
    src += sorted(glob.glob(os.path.join(SRC, "tests", "data", "tokenizer", "*.json")))
    for p in src:
        with open(p, "rb") as f:
            put(out, "fuzz_tokenizer_json", os.path.basename(p), f.read())
    toks, _, scores = spm_vocab()
    put(out, "fuzz_tokenizer_json", "spm-features.json", json.dumps({
        "added_tokens": [{"id": 0, "content": "<unk>", "special": True},
                         {"id": 1, "content": "<s>", "special": True},
                         {"id": 2, "content": "</s>", "special": True, "rstrip": True}],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing", "single": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": None,
        "model": {"type": "BPE", "byte_fallback": True, "unk_token": "<unk>",
                  "vocab": {t: i for i, t in enumerate(toks)},
                  "merges": [["l", "l"], ["\u2581", "H"], ["\u2581", "w"]]}},
        ensure_ascii=False))
    btoks, _, merges = bpe_vocab()
    put(out, "fuzz_tokenizer_json", "bytelevel-features.json", json.dumps({
        "added_tokens": [{"id": 14, "content": "<|im_start|>", "special": True,
                          "lstrip": True},
                         {"id": 15, "content": "<|endoftext|>", "special": False}],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "behavior": "Isolated", "invert": False, "pattern": {
                "Regex": "(?i:'s|'t)|\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"}},
            {"type": "Digits", "individual_digits": True},
            {"type": "Split", "pattern": {"String": "."}, "behavior": "MergedWithPrevious"},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]},
        "post_processor": {"type": "RobertaProcessing", "cls": ["<|im_start|>", 14],
                           "sep": ["<|endoftext|>", 15]},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "ignore_merges": True,
                  "vocab": {t: i for i, t in enumerate(btoks)}, "merges": merges}},
        ensure_ascii=False))


def tokenize_seeds(out):
    texts = [b"Hello world", "h\u00e9llo w\u00f6rld \u2014 \u65e5\u672c\u8a9e \U0001F389".encode(),
             b"  leading spaces\n\n\ttabs   and 12345 numbers don't I'll",
             b"<|endoftext|><|im_start|>user\nhi<|im_end|> <s></s><unk>",
             b"\xff\xfe invalid \xc3( utf-8 \xed\xa0\x80", b"a\0b\r\n\x7f"]
    for i, t in enumerate(texts):
        for sel in (0, 1, 2, 4, 5, 6):
            put(out, "fuzz_tokenize", "t%d-%d" % (i, sel), bytes([sel]) + t)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    gguf_seeds(out)
    safetensors_seeds(out)
    config_seeds(out)
    tokenizer_json_seeds(out)
    tokenize_seeds(out)


if __name__ == "__main__":
    main()
