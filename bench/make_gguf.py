#!/usr/bin/python3
"""make_gguf.py — converts a Hugging Face checkpoint directory (GPT-2 or
Llama family: llama, mistral, qwen2) into a GGUF v3 file that both loupe and
llama.cpp load, so the two engines can be benchmarked on the very same bytes.

    make_gguf.py HF_DIR OUT.gguf [--type f32|f16|q8_0]

What it writes (from the GGUF specification and the tensor/metadata naming
conventions of llama.cpp's model loader):
  - tensors named token_embd, position_embd (GPT-2), blk.N.attn_norm,
    attn_q/k/v (Llama) or attn_qkv (GPT-2, fused), attn_output, ffn_norm,
    ffn_gate (Llama), ffn_up, ffn_down, output_norm, output (absent when the
    head is tied), rope_freqs (Llama 3 rope scaling);
  - 2-D weight matrices in --type (q8_0: blocks of 32 with an fp16 scale;
    token_embd too), vectors and position_embd in F32;
  - "<arch>.*" hyper-parameters and tokenizer.ggml.* (SentencePiece vocab
    from tokenizer.model, else byte-level BPE from tokenizer.json or
    vocab.json + merges.txt).

Llama's Q and K rows are permuted: HF rotates the pairs (i, i + d/2) of each
head, GGUF "llama" files rotate interleaved pairs (2i, 2i + 1); row
r = half * d/2 + i of a head moves to 2i + half. qwen2 keeps HF's order.

The file is streamed tensor by tensor (the whole model never sits in memory).
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "ref"))
import gguf_np  # noqa: E402  (GGUF value encoding and the Q8_0 quantizer)
import safetensors_np  # noqa: E402

ALIGN = 32
T_F32, T_F16, T_Q8_0 = gguf_np.T_F32, gguf_np.T_F16, gguf_np.T_Q8_0
V_U32, V_I32, V_F32, V_BOOL, V_STR, V_ARR = 4, 5, 6, 7, 8, 9
FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7}  # general.file_type (llama_ftype)
WEIGHT_TYPE = {"f32": T_F32, "f16": T_F16, "q8_0": T_Q8_0}

# ------------------------------------------------------------------ reading HF


class Checkpoint:
    """Lazy access to the tensors of a (possibly sharded) safetensors dir."""

    def __init__(self, d):
        index = os.path.join(d, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self.where = {}
        for fn in files:
            path = os.path.join(d, fn)
            header, base = safetensors_np.read_header(path)
            header.pop("__metadata__", None)
            mm = np.memmap(path, dtype=np.uint8, mode="r")
            for name, h in header.items():
                self.where[name] = (mm, base, h)

    def has(self, name):
        return name in self.where

    def shape(self, name):
        return tuple(self.where[name][2]["shape"])

    def get(self, name):
        """float32 array of the tensor."""
        mm, base, h = self.where[name]
        b, e = h["data_offsets"]
        return safetensors_np.decode(mm[base + b:base + e].tobytes(), h["dtype"],
                                     tuple(h["shape"])).astype(np.float32)

# ------------------------------------------------------------------ tensors


class Tensor:
    """One output tensor: name, numpy shape (rows, cols) or (n,), GGUF type,
    and a function that makes its float32 values when it is written."""

    def __init__(self, name, shape, gtype, make):
        self.name, self.shape, self.gtype, self.make = name, tuple(shape), gtype, make

    def nbytes(self):
        n = int(np.prod(self.shape))
        return {T_F32: 4 * n, T_F16: 2 * n, T_Q8_0: n // 32 * 34}[self.gtype]

    def encode(self):
        x = np.ascontiguousarray(self.make(), dtype=np.float32)
        assert x.shape == self.shape, (self.name, x.shape, self.shape)
        if self.gtype == T_F32:
            return x.astype("<f4").tobytes()
        if self.gtype == T_F16:
            return x.astype("<f2").tobytes()
        return gguf_np.quantize_q8_0(x.reshape(-1, x.shape[-1]))


def mat_type(wtype, cols):
    """Q8_0 needs whole 32-blocks per row; others fall back to F16."""
    if wtype == T_Q8_0 and cols % 32:
        return T_F16
    return wtype


def permute_rope_rows(w, n_heads):
    """(n_heads * d, cols) half-split RoPE rows -> interleaved pairs."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, 2, d // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def gpt2_tensors(ck, c, wtype):
    D, L = c["n_embd"], c["n_layer"]
    p = "transformer." if ck.has("transformer.wte.weight") else ""
    T = []

    def add(name, src, shape, gtype, transpose=False):
        def make(src=src, transpose=transpose):
            x = ck.get(src)
            return x.T if transpose else x
        T.append(Tensor(name, shape, gtype, make))
    V = c["vocab_size"]
    add("token_embd.weight", p + "wte.weight", (V, D), mat_type(wtype, D))
    add("position_embd.weight", p + "wpe.weight", (c["n_positions"], D), T_F32)
    for i in range(L):
        h, b = p + "h.%d." % i, "blk.%d." % i
        F = ck.shape(h + "mlp.c_fc.weight")[1]
        add(b + "attn_norm.weight", h + "ln_1.weight", (D,), T_F32)
        add(b + "attn_norm.bias", h + "ln_1.bias", (D,), T_F32)
        add(b + "attn_qkv.weight", h + "attn.c_attn.weight", (3 * D, D), mat_type(wtype, D), True)
        add(b + "attn_qkv.bias", h + "attn.c_attn.bias", (3 * D,), T_F32)
        add(b + "attn_output.weight", h + "attn.c_proj.weight", (D, D), mat_type(wtype, D), True)
        add(b + "attn_output.bias", h + "attn.c_proj.bias", (D,), T_F32)
        add(b + "ffn_norm.weight", h + "ln_2.weight", (D,), T_F32)
        add(b + "ffn_norm.bias", h + "ln_2.bias", (D,), T_F32)
        add(b + "ffn_up.weight", h + "mlp.c_fc.weight", (F, D), mat_type(wtype, D), True)
        add(b + "ffn_up.bias", h + "mlp.c_fc.bias", (F,), T_F32)
        add(b + "ffn_down.weight", h + "mlp.c_proj.weight", (D, F), mat_type(wtype, F), True)
        add(b + "ffn_down.bias", h + "mlp.c_proj.bias", (D,), T_F32)
    add("output_norm.weight", p + "ln_f.weight", (D,), T_F32)
    add("output_norm.bias", p + "ln_f.bias", (D,), T_F32)
    if ck.has("lm_head.weight"):
        add("output.weight", "lm_head.weight", (V, D), mat_type(wtype, D))
    return T


def llama_tensors(ck, c, wtype, permute):
    D, L, V = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    H = c["num_attention_heads"]
    KV = c.get("num_key_value_heads") or H
    hd = c.get("head_dim") or D // H
    F = c["intermediate_size"]
    T = []

    def add(name, src, shape, gtype, heads=0):
        def make(src=src, heads=heads):
            x = ck.get(src)
            return permute_rope_rows(x, heads) if heads and permute else x
        T.append(Tensor(name, shape, gtype, make))
    add("token_embd.weight", "model.embed_tokens.weight", (V, D), mat_type(wtype, D))
    for i in range(L):
        h, b = "model.layers.%d." % i, "blk.%d." % i
        a = h + "self_attn."
        add(b + "attn_norm.weight", h + "input_layernorm.weight", (D,), T_F32)
        add(b + "attn_q.weight", a + "q_proj.weight", (H * hd, D), mat_type(wtype, D), H)
        add(b + "attn_k.weight", a + "k_proj.weight", (KV * hd, D), mat_type(wtype, D), KV)
        add(b + "attn_v.weight", a + "v_proj.weight", (KV * hd, D), mat_type(wtype, D))
        if ck.has(a + "q_proj.bias"):
            add(b + "attn_q.bias", a + "q_proj.bias", (H * hd,), T_F32)
            add(b + "attn_k.bias", a + "k_proj.bias", (KV * hd,), T_F32)
            add(b + "attn_v.bias", a + "v_proj.bias", (KV * hd,), T_F32)
        add(b + "attn_output.weight", a + "o_proj.weight", (D, H * hd), mat_type(wtype, H * hd))
        add(b + "ffn_norm.weight", h + "post_attention_layernorm.weight", (D,), T_F32)
        add(b + "ffn_gate.weight", h + "mlp.gate_proj.weight", (F, D), mat_type(wtype, D))
        add(b + "ffn_up.weight", h + "mlp.up_proj.weight", (F, D), mat_type(wtype, D))
        add(b + "ffn_down.weight", h + "mlp.down_proj.weight", (D, F), mat_type(wtype, F))
    add("output_norm.weight", "model.norm.weight", (D,), T_F32)
    if ck.has("lm_head.weight") and not c.get("tie_word_embeddings", False):
        add("output.weight", "lm_head.weight", (V, D), mat_type(wtype, D))
    return T


def llama3_rope_factors(c, rot_dim):
    """Per-pair divisors of the RoPE frequencies for rope_type "llama3"."""
    rs = c["rope_scaling"]
    base = c.get("rope_theta", 10000.0)
    factor, lo, hi = rs["factor"], rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old = rs["original_max_position_embeddings"]
    out = []
    for i in range(rot_dim // 2):
        wavelen = 2 * math.pi * base ** (2 * i / rot_dim)
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)

# ------------------------------------------------------------------ tokenizer


def read_spm_model(path):
    """tokenizer.model (a SentencePiece ModelProto) -> [(piece, score, type)].
    Field 1 of the model is a repeated SentencePiece message whose fields
    are 1 piece (string), 2 score (float), 3 type (enum, default NORMAL)."""
    buf = open(path, "rb").read()

    def varint(b, o):
        x = s = 0
        while True:
            c = b[o]
            o += 1
            x |= (c & 0x7F) << s
            s += 7
            if c < 0x80:
                return x, o

    def fields(b):
        o = 0
        while o < len(b):
            key, o = varint(b, o)
            f, wt = key >> 3, key & 7
            if wt == 0:
                v, o = varint(b, o)
            elif wt == 1:
                v, o = b[o:o + 8], o + 8
            elif wt == 5:
                v, o = b[o:o + 4], o + 4
            elif wt == 2:
                n, o = varint(b, o)
                v, o = b[o:o + n], o + n
            else:
                raise ValueError("%s: unsupported protobuf wire type %d" % (path, wt))
            yield f, wt, v
    pieces = []
    for f, wt, v in fields(buf):
        if f != 1 or wt != 2:
            continue
        piece, score, typ = b"", 0.0, 1
        for g, _, w in fields(v):
            if g == 1:
                piece = w
            elif g == 2:
                score = struct.unpack("<f", w)[0]
            elif g == 3:
                typ = w
        pieces.append((piece, score, typ))
    return pieces


def bpe_vocab(d):
    """(tokens by id, merges, added special ids) from tokenizer.json or
    vocab.json + merges.txt (+ tokenizer_config.json added tokens)."""
    tj = os.path.join(d, "tokenizer.json")
    added = {}
    if os.path.exists(tj):
        with open(tj, encoding="utf-8") as f:
            t = json.load(f)
        vocab = t["model"]["vocab"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in t["model"]["merges"]]
        for a in t.get("added_tokens", []):
            added[a["id"]] = (a["content"], a.get("special", True))
    else:
        with open(os.path.join(d, "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        with open(os.path.join(d, "merges.txt"), encoding="utf-8") as f:
            merges = [ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#version")]
        tc = os.path.join(d, "tokenizer_config.json")
        if os.path.exists(tc):
            with open(tc, encoding="utf-8") as f:
                for k, a in json.load(f).get("added_tokens_decoder", {}).items():
                    added[int(k)] = (a["content"], a.get("special", True))
    by_id = {i: s for s, i in vocab.items()}
    for i, (s, _) in added.items():
        by_id[i] = s
    return by_id, merges, {i for i, (_, sp) in added.items() if sp}


def tokenizer_kv(d, c, n_vocab):
    """tokenizer.ggml.* metadata for the model in d, padded to n_vocab."""
    kv = []
    spm = os.path.join(d, "tokenizer.model")
    if os.path.exists(spm):
        pieces = read_spm_model(spm)
        toks = [p for p, _, _ in pieces]
        scores = [s for _, s, _ in pieces]
        types = [t for _, _, t in pieces]
        model, pre, merges = "llama", None, None
    else:
        by_id, merges, special = bpe_vocab(d)
        n = max(by_id) + 1 if by_id else 0
        toks = [by_id.get(i, "[PAD%d]" % i).encode("utf-8") for i in range(n)]
        types = [3 if i in special else (1 if i in by_id else 5) for i in range(n)]
        scores = None
        model = "gpt2"
        pre = {"gpt2": "gpt-2", "qwen2": "qwen2"}.get(c["model_type"], "gpt-2")
    while len(toks) < n_vocab:  # embedding rows without a token
        toks.append(b"[PAD%d]" % len(toks))
        types.append(5)
        if scores is not None:
            scores.append(0.0)
    toks, types = toks[:n_vocab], types[:n_vocab]
    kv.append(("tokenizer.ggml.model", V_STR, model.encode()))
    if pre:
        kv.append(("tokenizer.ggml.pre", V_STR, pre.encode()))
    kv.append(("tokenizer.ggml.tokens", V_ARR, (V_STR, toks)))
    if scores is not None:
        kv.append(("tokenizer.ggml.scores", V_ARR, (V_F32, scores[:n_vocab])))
    kv.append(("tokenizer.ggml.token_type", V_ARR, (V_I32, types)))
    if merges is not None:
        kv.append(("tokenizer.ggml.merges", V_ARR, (V_STR, [m.encode("utf-8") for m in merges])))
    for key, hf in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        v = c.get(hf)
        if isinstance(v, list):
            v = v[0]
        if isinstance(v, int) and 0 <= v < n_vocab:
            kv.append(("tokenizer.ggml." + key, V_U32, v))
    if model == "llama":
        kv.append(("tokenizer.ggml.unknown_token_id", V_U32, 0))
        kv.append(("tokenizer.ggml.add_bos_token", V_BOOL, True))
    return kv

# ------------------------------------------------------------------ metadata


def model_kv(c, wtype_name, name):
    gpt2 = c["model_type"] == "gpt2"
    arch = "gpt2" if gpt2 else ("qwen2" if c["model_type"] == "qwen2" else "llama")
    kv = [("general.architecture", V_STR, arch.encode()),
          ("general.name", V_STR, name.encode()),
          ("general.file_type", V_U32, FILE_TYPE[wtype_name]),
          ("general.alignment", V_U32, ALIGN)]

    def u32(k, v):
        kv.append(("%s.%s" % (arch, k), V_U32, int(v)))

    def f32(k, v):
        kv.append(("%s.%s" % (arch, k), V_F32, float(v)))
    if gpt2:
        D = c["n_embd"]
        u32("context_length", c["n_positions"])
        u32("embedding_length", D)
        u32("feed_forward_length", c.get("n_inner") or 4 * D)
        u32("block_count", c["n_layer"])
        u32("attention.head_count", c["n_head"])
        f32("attention.layer_norm_epsilon", c["layer_norm_epsilon"])
        return arch, kv
    D, H = c["hidden_size"], c["num_attention_heads"]
    hd = c.get("head_dim") or D // H
    u32("context_length", c["max_position_embeddings"])
    u32("embedding_length", D)
    u32("feed_forward_length", c["intermediate_size"])
    u32("block_count", c["num_hidden_layers"])
    u32("attention.head_count", H)
    u32("attention.head_count_kv", c.get("num_key_value_heads") or H)
    u32("attention.key_length", hd)
    u32("attention.value_length", hd)
    u32("rope.dimension_count", hd)
    f32("rope.freq_base", c.get("rope_theta", 10000.0))
    f32("attention.layer_norm_rms_epsilon", c["rms_norm_eps"])
    u32("vocab_size", c["vocab_size"])
    rs = c.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        kv.append(("%s.rope.scaling.type" % arch, V_STR, b"linear"))
        f32("rope.scaling.factor", rs["factor"])
    elif kind not in (None, "default", "llama3"):
        raise SystemExit("make_gguf: rope scaling '%s' is not supported" % kind)
    return arch, kv

# ------------------------------------------------------------------ writing


def write(path, kv, tensors):
    """Streams a GGUF v3 file: header, tensor infos, then each tensor's data
    at an ALIGN-aligned offset, encoded only when it is written."""
    head = bytearray(gguf_np.GGUF_MAGIC + struct.pack("<IQQ", 3, len(tensors), len(kv)))
    for k, t, v in kv:
        kb = k.encode()
        head += struct.pack("<Q", len(kb)) + kb + struct.pack("<I", t)
        gguf_np._put_value(head, t, v)
    off = 0
    for t in tensors:
        nb = t.name.encode()
        ne = list(reversed(t.shape))  # GGUF lists the fastest dimension first
        head += struct.pack("<Q", len(nb)) + nb + struct.pack("<I", len(ne))
        head += b"".join(struct.pack("<Q", e) for e in ne)
        head += struct.pack("<IQ", t.gtype, off)
        off += (t.nbytes() + ALIGN - 1) // ALIGN * ALIGN
    head += b"\0" * ((-len(head)) % ALIGN)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(head)
        for t in tensors:
            raw = t.encode()
            assert len(raw) == t.nbytes(), t.name
            f.write(raw + b"\0" * ((-len(raw)) % ALIGN))
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("hf_dir")
    ap.add_argument("out")
    ap.add_argument("--type", choices=sorted(WEIGHT_TYPE), default="q8_0",
                    help="type of the 2-D weight matrices (default q8_0)")
    args = ap.parse_args()
    with open(os.path.join(args.hf_dir, "config.json")) as f:
        c = json.load(f)
    if c["model_type"] not in ("gpt2", "llama", "mistral", "qwen2"):
        raise SystemExit("make_gguf: model_type '%s' is not supported" % c["model_type"])
    ck = Checkpoint(args.hf_dir)
    wtype = WEIGHT_TYPE[args.type]
    name = os.path.basename(os.path.normpath(args.hf_dir))
    arch, kv = model_kv(c, args.type, name)
    if arch == "gpt2":
        tensors = gpt2_tensors(ck, c, wtype)
    else:
        tensors = llama_tensors(ck, c, wtype, permute=arch == "llama")
        rs = c.get("rope_scaling") or {}
        if rs.get("rope_type", rs.get("type")) == "llama3":
            hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
            f = llama3_rope_factors(c, hd)
            tensors.append(Tensor("rope_freqs.weight", f.shape, T_F32, lambda: f))
    kv += tokenizer_kv(args.hf_dir, c, tensors[0].shape[0])
    write(args.out, kv, tensors)


if __name__ == "__main__":
    main()
