#!/usr/bin/python3
"""reference.py — an independent numpy forward pass for Hugging Face GPT-2 and
Llama-family (llama, mistral, qwen2) checkpoints, computed in float64.

It follows the Hugging Face modelling code's semantics, written from the
model definitions and not from loupe's C code, so the two can check each
other:
  GPT-2:  h = wte[ids] + wpe[pos]; per block: h += attn(LN1(h)); h += mlp(LN2(h));
          Conv1D weights are (in, out): y = x @ W + b; c_attn is q|k|v fused;
          mlp = c_proj(act(c_fc(x))), act gelu_new (tanh) or gelu (erf).
  Llama:  h = embed[ids]; per block: h += o(attn(RMS(h))); h += down(silu(gate) * up);
          Linear weights are (out, in): y = x @ W.T (+ bias where the file has one:
          Qwen2 q/k/v, Llama attention_bias / mlp_bias);
          RoPE pairs (i, i + head_dim/2) ("rotate_half"), inv_freq = theta^(-2i/d),
          optionally rescaled (linear: /factor; llama3: transformers'
          _compute_llama3_parameters); GQA repeats each KV head n_heads/n_kv times.
Logits use the tied embedding or lm_head.weight.

Usage:
  reference.py logits MODEL_DIR OUT.f32 (--ids 1,2,3 | --ids-file F)
      writes (T, n_vocab) float32 little-endian logits
  reference.py greedy MODEL_DIR --ids 1,2,3 --n 80
      prints the greedy continuation ids, space separated
  --bf16-matmul (Llama family): every linear layer and the head take their
      input and weight rounded to bfloat16 (nearest even, via float32), then
      multiply in float64: what loupe's avx512bf16 kernels compute for f16
      weights in prefill.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

sys.dont_write_bytecode = True  # keep the source tree free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np as st  # noqa: E402

# ------------------------------------------------------------------ math

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def causal_attention(q, k, v):
    """q: (H, T, hd), k/v: (H, T, hd) (KV heads already repeated) -> (T, H*hd)."""
    H, T, hd = q.shape
    s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)  # (H, T, T)
    s = np.where(np.tril(np.ones((T, T), dtype=bool)), s, -np.inf)
    z = softmax(s) @ v  # (H, T, hd)
    return z.transpose(1, 0, 2).reshape(T, H * hd)

# ------------------------------------------------------------------ RoPE


def rope_inv_freq(cfg, head_dim):
    """(head_dim/2) inverse frequencies with the config's rope_scaling."""
    theta = float(cfg.get("rope_theta", 10000.0))
    dim = int(head_dim * float(cfg.get("partial_rotary_factor", 1.0)))
    inv = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    rs = cfg.get("rope_scaling")
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / float(rs["factor"])
    if kind == "llama3":
        factor = float(rs["factor"])
        lo, hi = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old_ctx = float(rs["original_max_position_embeddings"])
        lo_wavelen, hi_wavelen = old_ctx / lo, old_ctx / hi
        wavelen = 2.0 * math.pi / inv
        scaled = np.where(wavelen > lo_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= hi_wavelen) & (wavelen <= lo_wavelen)
        return np.where(medium, smoothed, scaled)
    raise ValueError("rope_scaling type %r not supported by the reference" % kind)


def apply_rope(x, inv_freq):
    """x: (H, T, hd); rotate pairs (i, i + d/2) of the first d=2*len(inv_freq) dims."""
    H, T, hd = x.shape
    d = 2 * len(inv_freq)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv_freq[None, :]  # (T, d/2)
    cos = np.concatenate([np.cos(ang)] * 2, -1)  # (T, d)
    sin = np.concatenate([np.sin(ang)] * 2, -1)
    r = x[..., :d]
    rot_half = np.concatenate([-r[..., d // 2:], r[..., :d // 2]], -1)
    out = x.copy()
    out[..., :d] = r * cos + rot_half * sin
    return out

BF16_MATMUL = False  # --bf16-matmul


def bf16(a):
    """a rounded to bfloat16 (nearest even, through float32), as float64."""
    u = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def matmul_t(x, w):
    """x @ w.T, in bfloat16 inputs under --bf16-matmul."""
    return bf16(x) @ bf16(w).T if BF16_MATMUL else x @ w.T

# ------------------------------------------------------------------ model


class Model:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.cfg = json.load(f)
        raw = st.read_checkpoint(model_dir)
        self.w = {k: v.astype(np.float64) for k, v in raw.items()}
        mt = self.cfg.get("model_type", "")
        if mt == "gpt2":
            self.arch = "gpt2"
        elif mt in ("llama", "mistral", "qwen2"):
            self.arch = "llama"
        else:
            raise ValueError("model_type %r not supported by the reference" % mt)

    def get(self, name):
        if name not in self.w:
            raise KeyError("tensor %s missing from the checkpoint" % name)
        return self.w[name]

    def forward(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        return self._gpt2(ids) if self.arch == "gpt2" else self._llama(ids)

    # ---- GPT-2
    def _gpt2(self, ids):
        c = self.cfg
        p = "transformer." if "transformer.wte.weight" in self.w else ""
        g = lambda n: self.get(p + n)  # noqa: E731
        D, H = c["n_embd"], c["n_head"]
        hd, eps = D // H, c.get("layer_norm_epsilon", 1e-5)
        if c.get("scale_attn_by_inverse_layer_idx") or c.get("reorder_and_upcast_attn"):
            raise ValueError("GPT-2 attention variants not supported by the reference")
        act_name = c.get("activation_function", "gelu_new")
        act = {"gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh,
               "gelu": gelu_erf}[act_name]
        T = len(ids)
        x = g("wte.weight")[ids] + g("wpe.weight")[np.arange(T)]  # (T, D)
        for L in range(c["n_layer"]):
            b = "h.%d." % L
            h = layer_norm(x, g(b + "ln_1.weight"), g(b + "ln_1.bias"), eps)
            qkv = h @ g(b + "attn.c_attn.weight") + g(b + "attn.c_attn.bias")  # (T, 3D)
            q, k, v = (qkv[:, i * D:(i + 1) * D].reshape(T, H, hd).transpose(1, 0, 2)
                       for i in range(3))
            z = causal_attention(q, k, v)
            x = x + z @ g(b + "attn.c_proj.weight") + g(b + "attn.c_proj.bias")
            h = layer_norm(x, g(b + "ln_2.weight"), g(b + "ln_2.bias"), eps)
            u = act(h @ g(b + "mlp.c_fc.weight") + g(b + "mlp.c_fc.bias"))
            x = x + u @ g(b + "mlp.c_proj.weight") + g(b + "mlp.c_proj.bias")
        x = layer_norm(x, g("ln_f.weight"), g("ln_f.bias"), eps)
        tied = c.get("tie_word_embeddings", True)
        head = g("wte.weight") if tied else self.get("lm_head.weight")
        return x @ head.T

    # ---- Llama family
    def _linear(self, x, name):
        y = matmul_t(x, self.get(name + ".weight"))
        if name + ".bias" in self.w:
            y = y + self.w[name + ".bias"]
        return y

    def _llama(self, ids):
        c = self.cfg
        D, H = c["hidden_size"], c["num_attention_heads"]
        KV = c.get("num_key_value_heads") or H
        hd = c.get("head_dim") or D // H
        eps = c.get("rms_norm_eps", 1e-6)
        if c.get("hidden_act", "silu") != "silu":
            raise ValueError("hidden_act %r not supported by the reference" % c["hidden_act"])
        inv_freq = rope_inv_freq(c, hd)
        T = len(ids)
        sw = c.get("sliding_window")
        if sw and c.get("use_sliding_window", True) and T > sw:
            raise ValueError("sequence longer than the sliding window")
        x = self.get("model.embed_tokens.weight")[ids]  # (T, D)
        for L in range(c["num_hidden_layers"]):
            b = "model.layers.%d." % L
            h = rms_norm(x, self.get(b + "input_layernorm.weight"), eps)
            q = self._linear(h, b + "self_attn.q_proj").reshape(T, H, hd).transpose(1, 0, 2)
            k = self._linear(h, b + "self_attn.k_proj").reshape(T, KV, hd).transpose(1, 0, 2)
            v = self._linear(h, b + "self_attn.v_proj").reshape(T, KV, hd).transpose(1, 0, 2)
            q, k = apply_rope(q, inv_freq), apply_rope(k, inv_freq)
            k, v = np.repeat(k, H // KV, axis=0), np.repeat(v, H // KV, axis=0)
            x = x + self._linear(causal_attention(q, k, v), b + "self_attn.o_proj")
            h = rms_norm(x, self.get(b + "post_attention_layernorm.weight"), eps)
            u = silu(self._linear(h, b + "mlp.gate_proj")) * self._linear(h, b + "mlp.up_proj")
            x = x + self._linear(u, b + "mlp.down_proj")
        x = rms_norm(x, self.get("model.norm.weight"), eps)
        tied = c.get("tie_word_embeddings", False)
        head = self.get("model.embed_tokens.weight") if tied else self.get("lm_head.weight")
        return matmul_t(x, head)


def greedy(model, ids, n):
    """Greedy continuation of ids (full recompute each step: simple, exact)."""
    ids = list(ids)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(model.forward(ids)[-1]))
        out.append(nxt)
        ids.append(nxt)
    return out

# ------------------------------------------------------------------ CLI


def parse_ids(args):
    if args.ids_file:
        with open(args.ids_file) as f:
            text = f.read()
    else:
        text = args.ids or ""
    return [int(t) for t in text.replace(",", " ").split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["logits", "greedy"])
    ap.add_argument("model_dir")
    ap.add_argument("out", nargs="?")
    ap.add_argument("--ids")
    ap.add_argument("--ids-file")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--bf16-matmul", action="store_true")
    args = ap.parse_args()
    global BF16_MATMUL
    BF16_MATMUL = args.bf16_matmul
    ids = parse_ids(args)
    if not ids:
        ap.error("no token ids given")
    model = Model(args.model_dir)
    if args.mode == "logits":
        if not args.out:
            ap.error("logits needs OUT.f32")
        model.forward(ids).astype("<f4").tofile(args.out)
    else:
        print(" ".join(str(i) for i in greedy(model, ids, args.n)))


if __name__ == "__main__":
    main()
