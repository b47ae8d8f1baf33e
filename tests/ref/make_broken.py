#!/usr/bin/python3
"""make_broken.py — test inputs for tests/test_loader.c, written at test time.

Usage: make_broken.py OUTDIR

Writes, independently of loupe's C code (numpy + the file format specs):

  OUTDIR/models/NAME/      small Hugging Face directories with random
                           weights: GPT-2 and Llama-family variants (sharded,
                           F16, BF16, untied head, qkv bias, misaligned data)
                           and a scaled-down copy of every real config in
                           ../shared/models/hf (same keys, small numbers)
  OUTDIR/gguf/NAME.gguf    small GGUF models (llama with Q8_0, qwen2 with
                           biases, gpt2 with a fused F16 attn_qkv)
  OUTDIR/expected.txt      what the loader must produce, one fact a line:
      NAME hp KEY VALUE             a hyper-parameter
      NAME mat FIELD LAYER R C V    element (R, C) of an lp_mat weight
      NAME vec FIELD LAYER I V      element I of a vector weight
      NAME inv I V                  rope_inv_freq[I]
    (LAYER is -1 for whole-model weights; V is exact: the float32 the file
    holds, after the F16 / BF16 / Q8_0 round trip)
  OUTDIR/broken/...        at least 20 malformed files and directories
  OUTDIR/broken.txt        one case a line, tab-separated:
      PATH  API  STATUS  SUBSTRING
    API: open (loupe_model_open), st (lp_read_safetensors), gguf
    (lp_read_gguf); STATUS: the loupe_status name; SUBSTRING: a piece of
    the message that must appear.
"""
import copy
import json
import math
import os
import shutil
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np as stn  # noqa: E402

SHARED = os.environ.get("LOUPE_SHARED",
                        os.path.join(os.path.dirname(__file__), "../../../shared"))
TOKENIZER = os.path.join(SHARED, "models/slm-gpt2-char/tokenizer.json")
STORIES = os.path.join(SHARED, "models/stories260K/stories260K.gguf")

rng = np.random.default_rng(20240611)
expected = []
broken = []

# ------------------------------------------------------------------ facts


def fact(*parts):
    expected.append(" ".join(str(p) for p in parts))


def fval(x):
    return repr(float(np.float32(x)))


def spots(shape, n=5):
    """A few (r, c) positions including both corners."""
    r, c = shape
    pts = [(0, 0), (r - 1, c - 1)]
    for _ in range(n):
        pts.append((int(rng.integers(r)), int(rng.integers(c))))
    return pts


def mat_facts(name, field, layer, w):
    """w: (rows, cols) float32 as the loader must present it (out, in)."""
    for r, c in spots(w.shape):
        fact(name, "mat", field, layer, r, c, fval(w[r, c]))


def vec_facts(name, field, layer, v):
    v = np.ravel(v)
    for i in sorted({0, len(v) - 1, int(rng.integers(len(v)))}):
        fact(name, "vec", field, layer, i, fval(v[i]))


def hp_facts(name, **kv):
    for k, v in kv.items():
        fact(name, "hp", k, v)

# ------------------------------------------------------------------ weights


def randn(*shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def gpt2_weights(c):
    """Tensors as GPT-2 stores them: Conv1D weights (in, out)."""
    C, F, V, L = c["n_embd"], c.get("n_inner") or 4 * c["n_embd"], c["vocab_size"], c["n_layer"]
    w = {"wte.weight": randn(V, C), "wpe.weight": randn(c["n_positions"], C),
         "ln_f.weight": randn(C), "ln_f.bias": randn(C)}
    for l in range(L):
        p = "h.%d." % l
        w.update({p + "ln_1.weight": randn(C), p + "ln_1.bias": randn(C),
                  p + "attn.c_attn.weight": randn(C, 3 * C), p + "attn.c_attn.bias": randn(3 * C),
                  p + "attn.c_proj.weight": randn(C, C), p + "attn.c_proj.bias": randn(C),
                  p + "ln_2.weight": randn(C), p + "ln_2.bias": randn(C),
                  p + "mlp.c_fc.weight": randn(C, F), p + "mlp.c_fc.bias": randn(F),
                  p + "mlp.c_proj.weight": randn(F, C), p + "mlp.c_proj.bias": randn(C),
                  p + "attn.bias": np.tril(np.ones((1, 1, 4, 4), np.float32))})
    if not c.get("tie_word_embeddings", True):
        w["lm_head.weight"] = randn(V, C)
    return w


def gpt2_facts(name, c, w):
    """Expected lp_model view of GPT-2 weights w (already dtype-rounded)."""
    C = c["n_embd"]
    mat_facts(name, "tok_embd", -1, w["wte.weight"])
    vec_facts(name, "pos_embd", -1, w["wpe.weight"])
    vec_facts(name, "out_norm_w", -1, w["ln_f.weight"])
    vec_facts(name, "out_norm_b", -1, w["ln_f.bias"])
    head = w["wte.weight"] if c.get("tie_word_embeddings", True) else w["lm_head.weight"]
    mat_facts(name, "lm_head", -1, head)
    for l in range(c["n_layer"]):
        p = "h.%d." % l
        qkv = w[p + "attn.c_attn.weight"].T            # (3C, C): out, in
        mat_facts(name, "wq", l, qkv[:C])
        mat_facts(name, "wk", l, qkv[C:2 * C])
        mat_facts(name, "wv", l, qkv[2 * C:])
        b = w[p + "attn.c_attn.bias"]
        vec_facts(name, "bq", l, b[:C])
        vec_facts(name, "bk", l, b[C:2 * C])
        vec_facts(name, "bv", l, b[2 * C:])
        mat_facts(name, "wo", l, w[p + "attn.c_proj.weight"].T)
        vec_facts(name, "bo", l, w[p + "attn.c_proj.bias"])
        mat_facts(name, "w_up", l, w[p + "mlp.c_fc.weight"].T)
        vec_facts(name, "b_up", l, w[p + "mlp.c_fc.bias"])
        mat_facts(name, "w_down", l, w[p + "mlp.c_proj.weight"].T)
        vec_facts(name, "b_down", l, w[p + "mlp.c_proj.bias"])
        vec_facts(name, "attn_norm_w", l, w[p + "ln_1.weight"])
        vec_facts(name, "attn_norm_b", l, w[p + "ln_1.bias"])
        vec_facts(name, "ffn_norm_w", l, w[p + "ln_2.weight"])
        vec_facts(name, "ffn_norm_b", l, w[p + "ln_2.bias"])


def llama_dims(c):
    H = c["num_attention_heads"]
    KV = c.get("num_key_value_heads") or H
    hd = c.get("head_dim") or c["hidden_size"] // H
    return c["hidden_size"], c["intermediate_size"], H * hd, KV * hd


def llama_weights(c):
    C, F, Q, KV = llama_dims(c)
    V, L = c["vocab_size"], c["num_hidden_layers"]
    bias = c["model_type"] == "qwen2" or c.get("attention_bias", False)
    w = {"model.embed_tokens.weight": randn(V, C), "model.norm.weight": randn(C)}
    for l in range(L):
        p = "model.layers.%d." % l
        w.update({p + "input_layernorm.weight": randn(C),
                  p + "self_attn.q_proj.weight": randn(Q, C),
                  p + "self_attn.k_proj.weight": randn(KV, C),
                  p + "self_attn.v_proj.weight": randn(KV, C),
                  p + "self_attn.o_proj.weight": randn(C, Q),
                  p + "post_attention_layernorm.weight": randn(C),
                  p + "mlp.gate_proj.weight": randn(F, C),
                  p + "mlp.up_proj.weight": randn(F, C),
                  p + "mlp.down_proj.weight": randn(C, F)})
        if bias:
            w.update({p + "self_attn.q_proj.bias": randn(Q),
                      p + "self_attn.k_proj.bias": randn(KV),
                      p + "self_attn.v_proj.bias": randn(KV)})
    if not c.get("tie_word_embeddings", False):
        w["lm_head.weight"] = randn(V, C)
    return w


def llama_facts(name, c, w):
    mat_facts(name, "tok_embd", -1, w["model.embed_tokens.weight"])
    vec_facts(name, "out_norm_w", -1, w["model.norm.weight"])
    tied = c.get("tie_word_embeddings", False)
    mat_facts(name, "lm_head", -1, w["model.embed_tokens.weight" if tied else "lm_head.weight"])
    for l in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % l
        for field, key in (("wq", "self_attn.q_proj"), ("wk", "self_attn.k_proj"),
                           ("wv", "self_attn.v_proj"), ("wo", "self_attn.o_proj"),
                           ("w_gate", "mlp.gate_proj"), ("w_up", "mlp.up_proj"),
                           ("w_down", "mlp.down_proj")):
            mat_facts(name, field, l, w[p + key + ".weight"])
        vec_facts(name, "attn_norm_w", l, w[p + "input_layernorm.weight"])
        vec_facts(name, "ffn_norm_w", l, w[p + "post_attention_layernorm.weight"])
        for field, key in (("bq", "q_proj"), ("bk", "k_proj"), ("bv", "v_proj")):
            if p + "self_attn." + key + ".bias" in w:
                vec_facts(name, field, l, w[p + "self_attn." + key + ".bias"])


def rounded(w, dtype):
    """What each tensor becomes after storage in dtype (str or per-name dict)."""
    out = {}
    for k, v in w.items():
        dt = dtype(k) if callable(dtype) else dtype
        out[k] = stn.quantize(v, dt)
    return out

# ------------------------------------------------------------------ rope


def hf_inv_freq(c):
    """transformers' rope_utils inv_freq (default / linear / llama3), float32."""
    H = c["num_attention_heads"]
    hd = c.get("head_dim") or c["hidden_size"] // H
    base = np.float32(c.get("rope_theta", 10000.0))
    e = (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / np.float32(hd))
    inv = (np.float32(1.0) / np.power(base, e, dtype=np.float32)).astype(np.float32)
    rs = c.get("rope_scaling")
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    factor = np.float32(rs["factor"])
    if kind == "linear":
        return (inv / factor).astype(np.float32)
    lo, hi = rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wl, high_wl = old / lo, old / hi
    wavelen = (np.float32(2 * math.pi) / inv).astype(np.float32)
    llama = np.where(wavelen > np.float32(low_wl), inv / factor, inv).astype(np.float32)
    smooth = ((np.float32(old) / wavelen - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)
    smoothed = ((np.float32(1) - smooth) * llama / factor + smooth * llama).astype(np.float32)
    medium = ~(wavelen < np.float32(high_wl)) & ~(wavelen > np.float32(low_wl))
    return np.where(medium, smoothed, llama).astype(np.float32)

# ------------------------------------------------------------------ HF dirs


def write_dir(d, config, w, dtype="F32", shards=1, gen=None):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if gen is not None:
        with open(os.path.join(d, "generation_config.json"), "w") as f:
            json.dump(gen, f, indent=2)
    shutil.copy(TOKENIZER, os.path.join(d, "tokenizer.json"))
    specs = []
    for k, v in w.items():
        dt = dtype(k) if callable(dtype) else dtype
        specs.append(stn.TensorSpec(k, v.shape, dt, lambda v=v: v))
    stn.write_checkpoint(d, specs, n_shards=shards)


GPT2_SMALL = {"model_type": "gpt2", "vocab_size": 64, "n_positions": 32, "n_ctx": 32,
              "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": None,
              "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
              "bos_token_id": 1, "eos_token_id": 2}

LLAMA_SMALL = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
               "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "max_position_embeddings": 128,
               "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
               "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}


def gpt2_model(name, config, dtype="F32", strip_prefix=False):
    w = gpt2_weights(config)
    r = rounded(w, dtype)
    prefix = "" if strip_prefix else "transformer."
    stored = {(k if k == "lm_head.weight" else prefix + k): v for k, v in w.items()}
    write_dir(os.path.join(OUT, "models", name), config, stored, dtype)
    gpt2_facts(name, config, r)
    fact(name, "hp", "n_params", n_params(w, skip=(".attn.bias",)))
    return r


def n_params(w, skip=()):
    """Elements of every weight the model uses (buffers in skip excluded)."""
    return sum(int(np.prod(v.shape)) for k, v in w.items() if not k.endswith(skip))


def llama_model(name, config, dtype="F32", shards=1, gen=None):
    w = llama_weights(config)
    write_dir(os.path.join(OUT, "models", name), config, w, dtype, shards, gen)
    llama_facts(name, config, rounded(w, dtype))
    fact(name, "hp", "n_params", n_params(w))
    for i, v in enumerate(hf_inv_freq(config)):
        fact(name, "inv", i, fval(v))
    return w


def synthetic_models():
    c = dict(GPT2_SMALL)
    gpt2_model("gpt2-f32", c)
    hp_facts("gpt2-f32", arch=1, n_vocab=64, n_ctx=32, dim=32, n_layers=2, n_heads=4,
             n_kv_heads=4, head_dim=8, ffn_dim=128, act=1, tied_head=1, bos_id=1, eos_id=2)
    c = dict(GPT2_SMALL, activation_function="gelu", tie_word_embeddings=False, n_inner=48)
    gpt2_model("gpt2-f16-untied-noprefix", c, dtype="F16", strip_prefix=True)
    hp_facts("gpt2-f16-untied-noprefix", act=2, tied_head=0, ffn_dim=48)

    c = dict(LLAMA_SMALL)
    llama_model("llama-sharded", c, shards=3)
    hp_facts("llama-sharded", arch=2, n_vocab=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
             head_dim=8, ffn_dim=64, tied_head=0, qkv_bias=0, rope_neox=1, rot_dim=8, act=3)
    llama_model("llama-bf16", dict(c, tie_word_embeddings=True), dtype="BF16")
    hp_facts("llama-bf16", tied_head=1)
    llama_model("llama-mixed", c, dtype=lambda k: "F16" if "proj" in k else "BF16")
    llama_model("llama-attn-bias", dict(c, attention_bias=True))
    hp_facts("llama-attn-bias", qkv_bias=1)
    llama_model("llama-linear-rope", dict(c, rope_scaling={"type": "linear", "factor": 4.0}),
                gen={"bos_token_id": 3, "eos_token_id": [5, 6]})
    hp_facts("llama-linear-rope", rope_scaling=1, bos_id=3, eos_id=5)
    misaligned_model()


def misaligned_model():
    """A safetensors file whose data section starts at an odd offset."""
    name = "llama-misaligned"
    c = dict(LLAMA_SMALL, num_hidden_layers=1)
    w = llama_weights(c)
    d = os.path.join(OUT, "models", name)
    write_dir(d, c, w)
    header, off, blobs = {}, 0, []
    for k, v in w.items():
        raw = v.astype("<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hj = json.dumps(header).encode()
    hj += b" " * ((3 - (8 + len(hj)) % 4) % 4)        # data starts at 4k + 3
    assert (8 + len(hj)) % 4 == 3
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))
    llama_facts(name, c, w)

# ------------------------------------------------------------------ real configs


def scaled_config(cfg):
    """Same keys, small numbers, same head ratios and flags."""
    c = copy.deepcopy(cfg)
    if c["model_type"] == "gpt2":
        c.update(n_embd=32, n_layer=2, n_head=4, n_positions=32, n_ctx=32, vocab_size=64)
        for k in ("bos_token_id", "eos_token_id"):
            if c.get(k) is not None:
                c[k] = 63
        return c
    H, KV = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
    ratio = H // KV
    c.update(num_attention_heads=2 * ratio, num_key_value_heads=2, hidden_size=2 * ratio * 8,
             intermediate_size=48, num_hidden_layers=2, vocab_size=64,
             max_position_embeddings=256)
    if "head_dim" in c:
        c["head_dim"] = 8
    small_ids(c)
    if c.get("sliding_window"):
        c["sliding_window"] = 128
    return c


def small_ids(c):
    """Token ids moved inside the 54-token test tokenizer: bos 51, eos 50."""
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(c.get(k), list):
            c[k] = [50 + i for i in range(len(c[k]))]
        elif c.get(k) is not None:
            c[k] = 51 if k == "bos_token_id" else 50


def scaled_generation_config(src):
    if not os.path.exists(src):
        return None
    g = json.load(open(src))
    small_ids(g)
    return g


def real_config_models():
    root = os.path.join(SHARED, "models/hf")
    for d in sorted(os.listdir(root)):
        path = os.path.join(root, d, "config.json")
        if not os.path.exists(path):
            continue
        cfg = json.load(open(path))
        c = scaled_config(cfg)
        gen = scaled_generation_config(os.path.join(root, d, "generation_config.json"))
        name = "real-" + d
        fact(name, "source", d)
        if c["model_type"] == "gpt2":
            gpt2_model(name, c, dtype="F16")
            hp_facts(name, arch=1, dim=32, n_layers=2, n_heads=4, n_ctx=32, n_vocab=64,
                     tied_head=1, act=1)
        else:
            llama_model(name, c, dtype="BF16", gen=gen)
            Q = c["num_attention_heads"]
            window = c.get("sliding_window") if (c["model_type"] != "qwen2" or
                                                 c.get("use_sliding_window")) else None
            hp_facts(name, arch=2, dim=c["hidden_size"], n_layers=2, n_heads=Q, n_kv_heads=2,
                     head_dim=8, ffn_dim=48, n_vocab=64, bos_id=51, eos_id=50,
                     n_ctx=min(256, window or 256),
                     tied_head=int(c.get("tie_word_embeddings", False)),
                     qkv_bias=int(c["model_type"] == "qwen2"), rope_neox=1,
                     rope_scaling=2 if c.get("rope_scaling") else 0)

# ------------------------------------------------------------------ GGUF

GGML_F32, GGML_F16, GGML_Q8_0, GGML_Q4_K = 0, 1, 8, 12
V_U32, V_I32, V_F32, V_STR, V_ARR = 4, 5, 6, 8, 9


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gval(t, v):
    fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}
    if t in fmt:
        return struct.pack(fmt[t], v)
    if t == V_STR:
        return gstr(v)
    et, items = v
    return struct.pack("<IQ", et, len(items)) + b"".join(gval(et, x) for x in items)


def gkv(key, t, v):
    return gstr(key) + struct.pack("<I", t) + gval(t, v)


def read_raw_kvs(path, prefix):
    """Raw bytes of every metadata entry of path whose key starts with prefix."""
    b = open(path, "rb").read()
    n_kv = struct.unpack_from("<Q", b, 16)[0]
    o = 24
    out = []

    def skip(t, o):
        fixed = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
        if t in fixed:
            return o + fixed[t]
        if t == V_STR:
            return o + 8 + struct.unpack_from("<Q", b, o)[0]
        et, n = struct.unpack_from("<IQ", b, o)
        o += 12
        for _ in range(n):
            o = skip(et, o)
        return o
    for _ in range(n_kv):
        start = o
        kl = struct.unpack_from("<Q", b, o)[0]
        key = b[o + 8:o + 8 + kl].decode()
        o += 8 + kl
        t = struct.unpack_from("<I", b, o)[0]
        o = skip(t, o + 4)
        if key.startswith(prefix):
            out.append(b[start:o])
    return out


def q8_0(x):
    """(rows, cols) float32 -> (raw Q8_0 bytes, dequantized float32)."""
    rows, cols = x.shape
    blk = x.reshape(-1, 32)
    d = (np.abs(blk).max(axis=1) / np.float32(127)).astype(np.float32)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    y = blk * inv[:, None]
    q = np.clip(np.sign(y) * np.floor(np.abs(y) + np.float32(0.5)), -127, 127).astype(np.int8)
    dh = d.astype(np.float16)
    rec = np.zeros(len(blk), dtype=[("d", "<u2"), ("qs", "i1", (32,))])
    rec["d"] = dh.view(np.uint16)
    rec["qs"] = q
    deq = (dh.astype(np.float32)[:, None] * q.astype(np.float32)).reshape(rows, cols)
    return rec.tobytes(), deq


def encode_tensor(x, gtype):
    """-> (raw bytes, float32 value the loader must see)."""
    if gtype == GGML_F32:
        return x.astype("<f4").tobytes(), x
    if gtype == GGML_F16:
        h = x.astype("<f2")
        return h.tobytes(), h.astype(np.float32)
    if gtype == GGML_Q8_0:
        return q8_0(x)
    raise ValueError(gtype)


def gguf_file(path, kvs, tensors, version=3, align=32, n_tensors=None, n_kv=None,
              offsets=None, types=None, trailer=b""):
    """tensors: [(name, shape in PyTorch order, raw bytes, ggml type)]."""
    out = bytearray(b"GGUF" + struct.pack("<I", version))
    out += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors,
                       len(kvs) if n_kv is None else n_kv)
    for kv in kvs:
        out += kv
    off, offs = 0, []   # forced offsets (offsets[i]) do not grow the data section
    for i, (name, shape, raw, t) in enumerate(tensors):
        forced = offsets is not None and offsets[i] is not None
        o = offsets[i] if forced else off
        offs.append(o)
        ne = list(reversed(shape))
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", e) for e in ne)
        out += struct.pack("<IQ", t if types is None or types[i] is None else types[i], o)
        if not forced:
            off = (off + len(raw) + align - 1) // align * align
    out += b"\0" * ((-len(out)) % align)
    base = len(out)
    data = bytearray(off)
    for (name, shape, raw, t), o in zip(tensors, offs):
        end = min(o + len(raw), len(data))
        if o < len(data):
            data[o:end] = raw[:end - o]
    out += data + trailer
    with open(path, "wb") as f:
        f.write(out)
    return base


def gguf_tokenizer_kvs():
    return read_raw_kvs(STORIES, "tokenizer.")


def gguf_model(arch, C=32, L=2, H=4, KV=2, F=64, V=512, ctx=64, qtype=GGML_F32,
               tied=False, bias=False, fused=False):
    """-> (kvs, tensors, expected {field: (layer, value)})."""
    hd = C // H
    kvs = [gkv("general.architecture", V_STR, arch), gkv("general.name", V_STR, "tiny")]
    kvs += [gkv(arch + ".context_length", V_U32, ctx), gkv(arch + ".embedding_length", V_U32, C),
            gkv(arch + ".block_count", V_U32, L), gkv(arch + ".feed_forward_length", V_U32, F),
            gkv(arch + ".attention.head_count", V_U32, H),
            gkv(arch + ".attention.head_count_kv", V_U32, KV)]
    if arch == "gpt2":
        kvs.append(gkv(arch + ".attention.layer_norm_epsilon", V_F32, 1e-5))
    else:
        kvs += [gkv(arch + ".attention.layer_norm_rms_epsilon", V_F32, 1e-6),
                gkv(arch + ".rope.freq_base", V_F32, 500000.0),
                gkv(arch + ".rope.dimension_count", V_U32, hd)]
    kvs += gguf_tokenizer_kvs()
    tensors, exp = [], []

    def add(name, x, t, field=None, layer=-1, kind="mat"):
        raw, val = encode_tensor(x, t if x.ndim == 2 else GGML_F32)
        tensors.append((name, list(x.shape), raw, t if x.ndim == 2 else GGML_F32))
        if field:
            exp.append((kind, field, layer, val))
        return val
    add("token_embd.weight", randn(V, C), qtype, "tok_embd")
    if arch == "gpt2":
        add("position_embd.weight", randn(ctx, C), GGML_F32, "pos_embd", kind="vec")
    add("output_norm.weight", randn(C), GGML_F32, "out_norm_w", kind="vec")
    if arch == "gpt2":
        add("output_norm.bias", randn(C), GGML_F32, "out_norm_b", kind="vec")
    if not tied:
        add("output.weight", randn(V, C), qtype, "lm_head")
    Q, K = H * hd, KV * hd
    for l in range(L):
        p = "blk.%d." % l
        add(p + "attn_norm.weight", randn(C), GGML_F32, "attn_norm_w", l, "vec")
        if fused:
            qkv = add(p + "attn_qkv.weight", randn(Q + 2 * K, C), qtype)
            exp += [("mat", "wq", l, qkv[:Q]), ("mat", "wk", l, qkv[Q:Q + K]),
                    ("mat", "wv", l, qkv[Q + K:])]
            b = add(p + "attn_qkv.bias", randn(Q + 2 * K), GGML_F32)
            exp += [("vec", "bq", l, b[:Q]), ("vec", "bk", l, b[Q:Q + K]),
                    ("vec", "bv", l, b[Q + K:])]
        else:
            add(p + "attn_q.weight", randn(Q, C), qtype, "wq", l)
            add(p + "attn_k.weight", randn(K, C), qtype, "wk", l)
            add(p + "attn_v.weight", randn(K, C), qtype, "wv", l)
            if bias:
                add(p + "attn_q.bias", randn(Q), GGML_F32, "bq", l, "vec")
                add(p + "attn_k.bias", randn(K), GGML_F32, "bk", l, "vec")
                add(p + "attn_v.bias", randn(K), GGML_F32, "bv", l, "vec")
        add(p + "attn_output.weight", randn(C, Q), qtype, "wo", l)
        add(p + "ffn_norm.weight", randn(C), GGML_F32, "ffn_norm_w", l, "vec")
        if arch != "gpt2":
            add(p + "ffn_gate.weight", randn(F, C), qtype, "w_gate", l)
        add(p + "ffn_up.weight", randn(F, C), qtype, "w_up", l)
        add(p + "ffn_down.weight", randn(C, F), qtype, "w_down", l)
        if arch == "gpt2":
            add(p + "attn_norm.bias", randn(C), GGML_F32, "attn_norm_b", l, "vec")
            add(p + "attn_output.bias", randn(C), GGML_F32, "bo", l, "vec")
            add(p + "ffn_norm.bias", randn(C), GGML_F32, "ffn_norm_b", l, "vec")
            add(p + "ffn_up.bias", randn(F), GGML_F32, "b_up", l, "vec")
            add(p + "ffn_down.bias", randn(C), GGML_F32, "b_down", l, "vec")
    return kvs, tensors, exp


def gguf_models():
    os.makedirs(os.path.join(OUT, "gguf"), exist_ok=True)
    cases = [("llama-q8", "llama", dict(qtype=GGML_Q8_0)),
             ("qwen2-bias", "qwen2", dict(bias=True, tied=True)),
             ("gpt2-fused-f16", "gpt2", dict(qtype=GGML_F16, fused=True, KV=4))]
    for name, arch, kw in cases:
        kvs, tensors, exp = gguf_model(arch, **kw)
        gguf_file(os.path.join(OUT, "gguf", name + ".gguf"), kvs, tensors)
        for kind, field, layer, val in exp:
            (mat_facts if kind == "mat" else vec_facts)(name, field, layer, val)
        fact(name, "hp", "n_params", sum(int(np.prod(sh)) for _, sh, _, _ in tensors))
        hp_facts(name, arch=1 if arch == "gpt2" else 2, dim=32, n_layers=2, n_heads=4,
                 n_kv_heads=kw.get("KV", 2), n_vocab=512, n_ctx=64,
                 ffn_dim=64, rope_neox=int(arch == "qwen2"), tied_head=int(kw.get("tied", False)),
                 qkv_bias=int(kw.get("bias", False)), bos_id=1, eos_id=2,
                 act=1 if arch == "gpt2" else 3)
        if arch != "gpt2":
            hd = 8
            inv = hf_inv_freq({"num_attention_heads": 4, "hidden_size": 32, "head_dim": hd,
                               "rope_theta": 500000.0})
            for i, v in enumerate(inv):
                fact(name, "inv", i, fval(v))

# ------------------------------------------------------------------ broken


def case(path, api, status, substring):
    assert "\t" not in substring
    broken.append("\t".join([path, api, status, substring]))


def bpath(*p):
    return os.path.join(OUT, "broken", *p)


def st_header_file(path, header, data=b"", hlen=None):
    hj = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj) if hlen is None else hlen) + hj + data)


def broken_safetensors():
    ok = {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}
    data = bytes(128)
    with open(bpath("st_tiny.safetensors"), "wb") as f:
        f.write(b"\x10\0\0")
    case(bpath("st_tiny.safetensors"), "st", "LOUPE_ERR_FORMAT", "too small")
    st_header_file(bpath("st_hlen.safetensors"), {"a": ok}, data, hlen=1 << 40)
    case(bpath("st_hlen.safetensors"), "st", "LOUPE_ERR_FORMAT",
         "header length 1099511627776 goes beyond the end of the file")
    st_header_file(bpath("st_notjson.safetensors"), b"{\"a\": {dtype: F32", data)
    case(bpath("st_notjson.safetensors"), "st", "LOUPE_ERR_FORMAT", "header is not valid JSON")
    st_header_file(bpath("st_array.safetensors"), [1, 2], data)
    case(bpath("st_array.safetensors"), "st", "LOUPE_ERR_FORMAT", "not a JSON object")
    st_header_file(bpath("st_oob.safetensors"),
                   {"w": dict(ok, data_offsets=[96, 160])}, data)
    case(bpath("st_oob.safetensors"), "st", "LOUPE_ERR_FORMAT",
         "tensor w: data_offsets [96, 160] out of bounds")
    st_header_file(bpath("st_truncated.safetensors"),
                   {"a": ok, "b": dict(ok, data_offsets=[64, 128])}, data[:100])
    case(bpath("st_truncated.safetensors"), "st", "LOUPE_ERR_FORMAT", "file truncated?")
    st_header_file(bpath("st_overlap.safetensors"),
                   {"a": ok, "b": dict(ok, data_offsets=[32, 96])}, data)
    case(bpath("st_overlap.safetensors"), "st", "LOUPE_ERR_FORMAT", "tensors a and b overlap")
    st_header_file(bpath("st_reversed.safetensors"),
                   {"a": dict(ok, shape=[0], data_offsets=[64, 0])}, data)
    case(bpath("st_reversed.safetensors"), "st", "LOUPE_ERR_FORMAT", "end before they begin")
    st_header_file(bpath("st_size.safetensors"), {"a": dict(ok, data_offsets=[0, 60])}, data)
    case(bpath("st_size.safetensors"), "st", "LOUPE_ERR_FORMAT",
         "span 60 bytes but F32 shape [4, 4] needs 64")
    st_header_file(bpath("st_i64.safetensors"),
                   {"__metadata__": {"format": "pt"}, "position_ids": dict(ok, dtype="I64",
                                                                           shape=[16],
                                                                           data_offsets=[0, 128])},
                   data)
    case(bpath("st_i64.safetensors"), "st", "LOUPE_ERR_UNSUPPORTED",
         "unsupported dtype I64 for tensor position_ids")
    st_header_file(bpath("st_overflow.safetensors"),
                   {"a": dict(ok, shape=[1 << 40, 1 << 40], data_offsets=[0, 64])}, data)
    case(bpath("st_overflow.safetensors"), "st", "LOUPE_ERR_FORMAT", "overflows the element count")
    st_header_file(bpath("st_negative.safetensors"), {"a": dict(ok, shape=[-4, 4])}, data)
    case(bpath("st_negative.safetensors"), "st", "LOUPE_ERR_FORMAT",
         "shape entry 0 is not a non-negative integer")
    st_header_file(bpath("st_5d.safetensors"), {"a": dict(ok, shape=[1, 1, 1, 4, 4])}, data)
    case(bpath("st_5d.safetensors"), "st", "LOUPE_ERR_UNSUPPORTED", "has 5 dimensions")
    st_header_file(bpath("st_nodtype.safetensors"), {"a": {"shape": [4, 4],
                                                            "data_offsets": [0, 64]}}, data)
    case(bpath("st_nodtype.safetensors"), "st", "LOUPE_ERR_FORMAT", "missing or non-string \"dtype\"")


def write_st_raw(path, entries):
    """entries: [(name, dtype, shape, raw bytes)], any dtype string."""
    header, off = {}, 0
    for name, dt, shape, raw in entries:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    st_header_file(path, header, b"".join(e[3] for e in entries))


def broken_dir(name, config=None, mutate=None, dtype="F32"):
    """A copy of a small llama dir, with config changes and weight surgery."""
    c = dict(LLAMA_SMALL)
    if config:
        c.update(config)
    w = llama_weights(dict(LLAMA_SMALL))
    if mutate:
        mutate(w)
    d = bpath(name)
    write_dir(d, c, w, dtype)
    return d


def broken_hf():
    d = broken_dir("hf_shape", mutate=lambda w: w.update(
        {"model.layers.0.self_attn.q_proj.weight": randn(32, 16)}))
    case(d, "open", "LOUPE_ERR_SHAPE", "model.safetensors: model.layers.0.self_attn.q_proj.weight: "
         "shape [32, 16] but config.json implies [32, 32]")
    d = broken_dir("hf_missing", mutate=lambda w: w.pop("model.layers.1.mlp.down_proj.weight"))
    case(d, "open", "LOUPE_ERR_MISSING", "tensor model.layers.1.mlp.down_proj.weight is missing")
    d = broken_dir("hf_no_head", mutate=lambda w: w.pop("lm_head.weight"))
    case(d, "open", "LOUPE_ERR_MISSING", "lm_head.weight is missing and tie_word_embeddings is false")
    d = broken_dir("hf_foo", {"model_type": "foo"})
    case(d, "open", "LOUPE_ERR_UNSUPPORTED",
         "unknown model_type 'foo' (supported: gpt2, llama, mistral, qwen2)")
    absurd = [("hf_layers0", {"num_hidden_layers": 0}, "layer count 0 is out of range"),
              ("hf_layers_huge", {"num_hidden_layers": 2000000}, "layer count 2000000"),
              ("hf_heads_div", {"num_attention_heads": 3, "num_key_value_heads": 3},
               "hidden size 32 is not divisible by 3 attention heads"),
              ("hf_kv_div", {"num_key_value_heads": 3}, "4 attention heads are not a multiple of 3"),
              ("hf_vocab0", {"vocab_size": 0}, "vocabulary size 0"),
              ("hf_ctx_huge", {"max_position_embeddings": 1 << 30}, "context length 1073741824"),
              ("hf_dim_negative", {"hidden_size": -32}, "hidden size -32"),
              ("hf_eps", {"rms_norm_eps": 0}, "norm epsilon 0"),
              ("hf_llama3_factors", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                                      "low_freq_factor": 4.0,
                                                      "high_freq_factor": 1.0,
                                                      "original_max_position_embeddings": 64}},
               "llama3 rope scaling needs")]
    for name, cfg, msg in absurd:
        case(broken_dir(name, cfg), "open", "LOUPE_ERR_FORMAT", msg)
    d = broken_dir("hf_yarn", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    case(d, "open", "LOUPE_ERR_UNSUPPORTED", "rope_scaling type 'yarn' is not supported")
    d = broken_dir("hf_act", {"hidden_act": "gelu"})
    case(d, "open", "LOUPE_ERR_UNSUPPORTED", "hidden_act 'gelu' is not supported")
    d = broken_dir("hf_string_int", {"hidden_size": "32"})
    case(d, "open", "LOUPE_ERR_FORMAT", "\"hidden_size\" must be an integer")
    d = broken_dir("hf_no_key")
    cfg = json.load(open(os.path.join(d, "config.json")))
    del cfg["intermediate_size"]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    case(d, "open", "LOUPE_ERR_MISSING", "config.json: key \"intermediate_size\" is missing")
    d = broken_dir("hf_bad_json")
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write("{\"model_type\": \"llama\",")
    case(d, "open", "LOUPE_ERR_FORMAT", "config.json: not valid JSON")
    d = broken_dir("hf_no_config")
    os.remove(os.path.join(d, "config.json"))
    case(d, "open", "LOUPE_ERR_MISSING", "config.json: cannot open")
    d = broken_dir("hf_no_weights")
    os.remove(os.path.join(d, "model.safetensors"))
    case(d, "open", "LOUPE_ERR_MISSING", "no model.safetensors or model.safetensors.index.json")
    d = broken_dir("hf_i64")
    w = llama_weights(dict(LLAMA_SMALL))
    entries = [(k, "F32", list(v.shape), v.astype("<f4").tobytes()) for k, v in w.items()]
    entries.append(("model.rotary.inv_freq", "I64", [4], bytes(32)))
    write_st_raw(os.path.join(d, "model.safetensors"), entries)
    case(d, "open", "LOUPE_ERR_UNSUPPORTED", "unsupported dtype I64 for tensor model.rotary.inv_freq")
    d = broken_dir("hf_truncated")
    p = os.path.join(d, "model.safetensors")
    raw = open(p, "rb").read()
    open(p, "wb").write(raw[:len(raw) * 2 // 3])
    case(d, "open", "LOUPE_ERR_FORMAT", "file truncated?")
    broken_shards()


def sharded_broken(name):
    d = bpath(name)
    c = dict(LLAMA_SMALL)
    w = llama_weights(c)
    specs = [stn.TensorSpec(k, v.shape, "F32", lambda v=v: v) for k, v in w.items()]
    os.makedirs(d, exist_ok=True)
    json.dump(c, open(os.path.join(d, "config.json"), "w"))
    shutil.copy(TOKENIZER, os.path.join(d, "tokenizer.json"))
    stn.write_checkpoint(d, specs, n_shards=2)
    index = os.path.join(d, "model.safetensors.index.json")
    return d, index, json.load(open(index))


def broken_shards():
    d, index, idx = sharded_broken("hf_shard_missing")
    os.remove(os.path.join(d, "model-00002-of-00002.safetensors"))
    case(d, "open", "LOUPE_ERR_IO", "model-00002-of-00002.safetensors: cannot open")
    d, index, idx = sharded_broken("hf_shard_traversal")
    k = next(iter(idx["weight_map"]))
    idx["weight_map"][k] = "../hf_shard_missing/model-00001-of-00002.safetensors"
    json.dump(idx, open(index, "w"))
    case(d, "open", "LOUPE_ERR_FORMAT", "is not a plain file name")
    d, index, idx = sharded_broken("hf_shard_wrong_map")
    idx["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors"
    idx["weight_map"]["model.layers.0.input_layernorm.weight"] = "model-00002-of-00002.safetensors"
    json.dump(idx, open(index, "w"))
    case(d, "open", "LOUPE_ERR_FORMAT", "weight_map puts")
    d, index, idx = sharded_broken("hf_shard_duplicate")
    stn.write_file(os.path.join(d, "model-00002-of-00002.safetensors"),
                   {"model.embed_tokens.weight": randn(64, 32), "model.norm.weight": randn(32)})
    case(d, "open", "LOUPE_ERR_FORMAT", "tensor model.embed_tokens.weight appears twice")


def g(name):
    return bpath(name + ".gguf")


def broken_gguf_layout(kvs, tensors):
    """Header, counts, tensor infos and data placement."""
    open(g("bad_magic"), "wb").write(b"GGUX" + bytes(60))
    case(g("bad_magic"), "gguf", "LOUPE_ERR_FORMAT", "not a GGUF file (bad magic)")
    case(g("bad_magic"), "open", "LOUPE_ERR_FORMAT", "not a GGUF, .loupe file or model directory")
    gguf_file(g("v1"), kvs, tensors, version=1)
    case(g("v1"), "gguf", "LOUPE_ERR_UNSUPPORTED", "GGUF version 1 is not supported")
    gguf_file(g("v4"), kvs, tensors, version=4)
    case(g("v4"), "gguf", "LOUPE_ERR_UNSUPPORTED", "unknown GGUF version 4")
    gguf_file(g("v2"), kvs, tensors, version=2)     # v2 is fine: a control
    case(g("v2"), "gguf", "LOUPE_OK", "")
    types = [GGML_Q4_K if n == "blk.0.attn_q.weight" else None for n, _, _, _ in tensors]
    gguf_file(g("q4k"), kvs, tensors, types=types)
    case(g("q4k"), "gguf", "LOUPE_ERR_UNSUPPORTED", "unsupported tensor type Q4_K for blk.0.attn_q.weight")
    types = [99 if n == "blk.1.ffn_up.weight" else None for n, _, _, _ in tensors]
    gguf_file(g("type99"), kvs, tensors, types=types)
    case(g("type99"), "gguf", "LOUPE_ERR_UNSUPPORTED", "unknown tensor type id 99 for blk.1.ffn_up.weight")
    gguf_file(g("tensor_count"), kvs, tensors, n_tensors=1 << 60)
    case(g("tensor_count"), "gguf", "LOUPE_ERR_FORMAT", "tensor count 1152921504606846976 is impossible")
    gguf_file(g("kv_count"), kvs, tensors, n_kv=(1 << 64) - 1)
    case(g("kv_count"), "gguf", "LOUPE_ERR_FORMAT", "metadata count 18446744073709551615 is impossible")
    gguf_file(g("cut_meta"), kvs, tensors)
    raw = open(g("cut_meta"), "rb").read()
    kv_end = 24 + sum(len(k) for k in kvs)          # last kv: a u32 token id
    open(g("cut_meta"), "wb").write(raw[:kv_end - 3])
    case(g("cut_meta"), "gguf", "LOUPE_ERR_FORMAT",
         "truncated: tokenizer.ggml.padding_token_id needs 4 bytes")
    open(g("cut_head"), "wb").write(raw[:300])
    case(g("cut_head"), "gguf", "LOUPE_ERR_FORMAT", "tensor count 21 is impossible for a file of 300")
    offs = [None] * len(tensors)
    offs[-1] = 1 << 20
    gguf_file(g("oob"), kvs, tensors, offsets=offs)
    case(g("oob"), "gguf", "LOUPE_ERR_FORMAT", "out of bounds")
    gguf_file(g("cut"), kvs, tensors)
    raw = open(g("cut"), "rb").read()
    open(g("cut"), "wb").write(raw[:len(raw) - 64])
    case(g("cut"), "gguf", "LOUPE_ERR_FORMAT", "blk.1.ffn_down.weight: bytes")
    offs = [None] * len(tensors)
    offs[3] = 0
    gguf_file(g("overlap"), kvs, tensors, offsets=offs)
    case(g("overlap"), "gguf", "LOUPE_ERR_FORMAT", "overlap in the data section")
    gguf_file(g("align3"), kvs + [gkv("general.alignment", V_U32, 3)], tensors)
    case(g("align3"), "gguf", "LOUPE_ERR_FORMAT", "general.alignment 3 is not a power of two")
    offs = [None] * len(tensors)
    offs[2] = 4096 + 8
    gguf_file(g("misaligned"), kvs, tensors, offsets=offs)
    case(g("misaligned"), "gguf", "LOUPE_ERR_FORMAT", "is not a multiple of the alignment 32")
    bad = [(n, [1, 48], r, GGML_Q8_0) if n == "blk.0.attn_norm.weight" else (n, s, r, t)
           for n, s, r, t in tensors]
    gguf_file(g("q8_rows"), kvs, bad)
    case(g("q8_rows"), "gguf", "LOUPE_ERR_FORMAT", "Q8_0 rows of 48 elements are not a multiple of 32")
    five = [(n, [1, 1, 1, 1, 32], r, t) if n == "output_norm.weight" else (n, s, r, t)
            for n, s, r, t in tensors]
    gguf_file(g("five_dims"), kvs, five)
    case(g("five_dims"), "gguf", "LOUPE_ERR_FORMAT", "tensor output_norm.weight has 5 dimensions")


def broken_gguf_metadata(kvs, tensors):
    """Metadata lengths, types, nesting and duplicates."""
    key = struct.pack("<Q", 1 << 63) + b"general.x"
    gguf_file(g("strlen"), [key], [])
    case(g("strlen"), "gguf", "LOUPE_ERR_FORMAT",
         "truncated: metadata key needs 9223372036854775808 bytes")
    arr = gstr("big.array") + struct.pack("<IIQ", V_ARR, V_U32, 1 << 61)
    gguf_file(g("array_len"), [arr], [])
    case(g("array_len"), "gguf", "LOUPE_ERR_FORMAT", "array of 2305843009213693952 elements")
    arr = gstr("strings") + struct.pack("<IIQ", V_ARR, V_STR, 1 << 40)
    gguf_file(g("string_array"), [arr], [])
    case(g("string_array"), "gguf", "LOUPE_ERR_FORMAT", "1099511627776 strings cannot fit")
    nested = (V_U32, [1, 2])
    for _ in range(10):
        nested = (V_ARR, [nested])
    gguf_file(g("nested"), [gkv("deep", V_ARR, nested)], [])
    case(g("nested"), "gguf", "LOUPE_ERR_FORMAT", "arrays nested deeper than 8")
    ok_nested = (V_ARR, [(V_STR, ["a", "bc"]), (V_I32, [1, -2, 3])])
    gguf_file(g("nested_ok"), [gkv("fine", V_ARR, ok_nested)] + kvs, tensors)
    case(g("nested_ok"), "gguf", "LOUPE_OK", "")
    gguf_file(g("value_type"), [gstr("odd") + struct.pack("<I", 13) + bytes(8)], [])
    case(g("value_type"), "gguf", "LOUPE_ERR_FORMAT", "metadata odd: unknown value type 13")
    gguf_file(g("dup_key"), kvs + [gkv("general.name", V_STR, "again")], tensors)
    case(g("dup_key"), "gguf", "LOUPE_ERR_FORMAT", "metadata key general.name appears twice")


def broken_gguf_model(kvs, tensors):
    """Well-formed files that are not a model loupe can run (loupe_model_open)."""
    bert = [gkv("general.architecture", V_STR, "bert")] + kvs[1:]
    gguf_file(g("bert"), bert, tensors)
    case(g("bert"), "open", "LOUPE_ERR_UNSUPPORTED",
         "unsupported architecture 'bert' (supported: llama, qwen2, gpt2)")
    gguf_file(g("missing_tensor"), kvs, [t for t in tensors if t[0] != "blk.1.ffn_up.weight"])
    case(g("missing_tensor"), "open", "LOUPE_ERR_MISSING", "tensor blk.1.ffn_up.weight is missing")
    shp = [(n, [32, 64], r, t) if n == "blk.0.ffn_gate.weight" else (n, s, r, t)
           for n, s, r, t in tensors]
    gguf_file(g("shape"), kvs, shp)
    case(g("shape"), "open", "LOUPE_ERR_SHAPE",
         "blk.0.ffn_gate.weight: shape [32, 64] but the GGUF metadata implies [64, 32]")
    gguf_file(g("no_blocks"), [k for k in kvs if b"llama.block_count" not in k], tensors)
    case(g("no_blocks"), "open", "LOUPE_ERR_MISSING", "metadata llama.block_count is missing")
    heads = [k for k in kvs if b"head_count_kv" not in k]
    heads.append(gkv("llama.attention.head_count_kv", V_U32, 3))
    gguf_file(g("kv_heads"), heads, tensors)
    case(g("kv_heads"), "open", "LOUPE_ERR_FORMAT", "4 attention heads are not a multiple of 3")
    open(bpath("empty.gguf"), "wb").close()
    case(bpath("empty.gguf"), "open", "LOUPE_ERR_FORMAT", "empty file")
    case(bpath("empty.gguf"), "gguf", "LOUPE_ERR_FORMAT", "bad magic")
    open(bpath("notes.txt"), "w").write("just some text\n")
    case(bpath("notes.txt"), "open", "LOUPE_ERR_FORMAT", "not a GGUF, .loupe file or model directory")
    case(bpath("does-not-exist"), "open", "LOUPE_ERR_IO", "No such file or directory")
    case(bpath("does-not-exist.safetensors"), "st", "LOUPE_ERR_IO", "cannot open: No such file")


def broken_gguf():
    kvs, tensors, _ = gguf_model("llama")
    broken_gguf_layout(kvs, tensors)
    broken_gguf_metadata(kvs, tensors)
    broken_gguf_model(kvs, tensors)


def slm_facts():
    """The real slm-gpt2-char checkpoint, read with numpy: Conv1D transposed."""
    d = os.path.join(SHARED, "models/slm-gpt2-char")
    cfg = json.load(open(os.path.join(d, "config.json")))
    w, _, _ = stn.read_file(os.path.join(d, "model.safetensors"))
    w = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in w.items()}
    gpt2_facts("slm-gpt2-char", cfg, w)
    fact("slm-gpt2-char", "hp", "n_params", n_params(w, skip=(".attn.bias",)))


def main():
    global OUT
    OUT = sys.argv[1]
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(os.path.join(OUT, "broken"))
    synthetic_models()
    slm_facts()
    real_config_models()
    gguf_models()
    broken_safetensors()
    broken_hf()
    broken_gguf()
    with open(os.path.join(OUT, "expected.txt"), "w") as f:
        f.write("\n".join(expected) + "\n")
    with open(os.path.join(OUT, "broken.txt"), "w") as f:
        f.write("\n".join(broken) + "\n")


if __name__ == "__main__":
    main()
