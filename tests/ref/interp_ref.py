#!/usr/bin/python3
"""interp_ref.py — numpy references for loupe's interpretability tools.

Builds on reference.py (its Model class reads Hugging Face GPT-2 and
Llama-family checkpoints, its math helpers follow the HF modelling code) and
records what the hook points expose, computed in float64:

  pattern     (L, H, T, T)  softmax attention weights, causal, like HF
                            output_attentions
  resid_pre   (L, T, D)     residual stream before each layer
  attn_z      (L, T, H*hd)  per-head attention outputs before W_O
  attn_out    (L, T, D)     attention block output (after W_O and its bias)
  resid_post  (L, T, D)     residual stream after each layer
  logits      (T, V)
  lens        (L, T, V)     log_softmax(unembed(final_norm(resid_post.L)))

Usage:
  interp_ref.py record MODEL_DIR OUT_DIR --ids 1,2,3
      writes OUT_DIR/<name>.npy for each array above (float32)
  interp_ref.py check-wo MODEL_DIR Z.npy ATTN_OUT.npy --layer L [--tol 1e-4]
      checks that sum over heads of z_h @ W_O[h] (+ bias) equals attn_out,
      with W_O read from the checkpoint; exit 1 and a message if not
  interp_ref.py bias MODEL_DIR OUT.npy --layer L
      writes the attention output bias of layer L (zeros if none), (D,)
  interp_ref.py rollout PATTERNS.npy OUT.npy
      attention rollout (Abnar & Zuidema 2020) of (L, H, T, T) patterns
  interp_ref.py shapley MODEL_DIR OUT.npy --ids 1,2,3 --target 4,5 [--keep-first]
      exact Shapley values of removing prompt tokens, from all 2^n subsets
      (the value of a subset is log p(target | its tokens in order); an
      empty context gives the first target token log(1/V))
  interp_ref.py occlusion MODEL_DIR OUT.npy --ids 1,2,3 --target 4,5 [--keep-first]
      log p(target | prompt) - log p(target | prompt without token i)
  interp_ref.py compare DIR_A DIR_B OUT.npy --ids 1,2,3
      (2, L): per layer, mean Jensen-Shannon divergence (bits) of the two
      models' attention rows over heads and queries, and mean KL (nats) of
      their logit-lens distributions over positions
  interp_ref.py png IMAGE.png OUT.npy
      decodes an 8-bit RGB PNG (zlib + the five scanline filters) into
      (height, width, 3) float32 pixel values 0..255
"""
import argparse
import itertools
import math
import os
import struct
import sys
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref  # noqa: E402

# ------------------------------------------------------------------ forward


def _attend(q, k, v):
    """q, k, v: (H, T, hd) -> pattern (H, T, T), z (T, H*hd)."""
    H, T, hd = q.shape
    s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
    s = np.where(np.tril(np.ones((T, T), dtype=bool)), s, -np.inf)
    p = ref.softmax(s)
    z = (p @ v).transpose(1, 0, 2).reshape(T, H * hd)
    return p, z


class Recorder:
    """A forward pass that keeps every hook point's activation."""

    def __init__(self, model_dir):
        self.m = ref.Model(model_dir)
        self.cfg = self.m.cfg

    def _g(self, name):
        w = self.m.w
        p = "transformer." if "transformer.wte.weight" in w else ""
        return self.m.get(p + name)

    def run(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        rec = {k: [] for k in ("pattern", "resid_pre", "attn_z", "attn_out", "resid_post")}
        if self.m.arch == "gpt2":
            x = self._gpt2(ids, rec)
        else:
            x = self._llama(ids, rec)
        out = {k: np.stack(v) for k, v in rec.items()}
        out["logits"] = self.unembed(x)
        out["lens"] = np.stack([log_softmax(self.unembed(r)) for r in out["resid_post"]])
        return out

    def attn_proj(self, L):
        """W_O as (H*hd, D) such that attn_out = z @ W_O + b, and b (D,)."""
        if self.m.arch == "gpt2":
            b = "h.%d.attn.c_proj." % L
            return self._g(b + "weight"), self._g(b + "bias")
        name = "model.layers.%d.self_attn.o_proj." % L
        W = self.m.get(name + "weight").T
        bias = self.m.w.get(name + "bias")
        return W, (bias if bias is not None else np.zeros(W.shape[1]))

    def unembed(self, x):
        c = self.cfg
        if self.m.arch == "gpt2":
            x = ref.layer_norm(x, self._g("ln_f.weight"), self._g("ln_f.bias"),
                               c.get("layer_norm_epsilon", 1e-5))
            tied = c.get("tie_word_embeddings", True)
            head = self._g("wte.weight") if tied else self.m.get("lm_head.weight")
        else:
            x = ref.rms_norm(x, self.m.get("model.norm.weight"), c.get("rms_norm_eps", 1e-6))
            tied = c.get("tie_word_embeddings", False)
            head = (self.m.get("model.embed_tokens.weight") if tied
                    else self.m.get("lm_head.weight"))
        return x @ head.T

    def _gpt2(self, ids, rec):
        c, g = self.cfg, self._g
        D, H = c["n_embd"], c["n_head"]
        hd, eps = D // H, c.get("layer_norm_epsilon", 1e-5)
        act = {"gelu_new": ref.gelu_tanh, "gelu_pytorch_tanh": ref.gelu_tanh,
               "gelu": ref.gelu_erf}[c.get("activation_function", "gelu_new")]
        T = len(ids)
        x = g("wte.weight")[ids] + g("wpe.weight")[np.arange(T)]
        for L in range(c["n_layer"]):
            b = "h.%d." % L
            rec["resid_pre"].append(x.copy())
            h = ref.layer_norm(x, g(b + "ln_1.weight"), g(b + "ln_1.bias"), eps)
            qkv = h @ g(b + "attn.c_attn.weight") + g(b + "attn.c_attn.bias")
            q, k, v = (qkv[:, i * D:(i + 1) * D].reshape(T, H, hd).transpose(1, 0, 2)
                       for i in range(3))
            p, z = _attend(q, k, v)
            o = z @ g(b + "attn.c_proj.weight") + g(b + "attn.c_proj.bias")
            rec["pattern"].append(p)
            rec["attn_z"].append(z)
            rec["attn_out"].append(o)
            x = x + o
            h = ref.layer_norm(x, g(b + "ln_2.weight"), g(b + "ln_2.bias"), eps)
            u = act(h @ g(b + "mlp.c_fc.weight") + g(b + "mlp.c_fc.bias"))
            x = x + u @ g(b + "mlp.c_proj.weight") + g(b + "mlp.c_proj.bias")
            rec["resid_post"].append(x.copy())
        return x

    def _llama(self, ids, rec):
        m, c = self.m, self.cfg
        D, H = c["hidden_size"], c["num_attention_heads"]
        KV = c.get("num_key_value_heads") or H
        hd = c.get("head_dim") or D // H
        eps = c.get("rms_norm_eps", 1e-6)
        inv_freq = ref.rope_inv_freq(c, hd)
        T = len(ids)
        x = m.get("model.embed_tokens.weight")[ids]
        for L in range(c["num_hidden_layers"]):
            b = "model.layers.%d." % L
            rec["resid_pre"].append(x.copy())
            h = ref.rms_norm(x, m.get(b + "input_layernorm.weight"), eps)
            q = m._linear(h, b + "self_attn.q_proj").reshape(T, H, hd).transpose(1, 0, 2)
            k = m._linear(h, b + "self_attn.k_proj").reshape(T, KV, hd).transpose(1, 0, 2)
            v = m._linear(h, b + "self_attn.v_proj").reshape(T, KV, hd).transpose(1, 0, 2)
            q, k = ref.apply_rope(q, inv_freq), ref.apply_rope(k, inv_freq)
            k, v = np.repeat(k, H // KV, axis=0), np.repeat(v, H // KV, axis=0)
            p, z = _attend(q, k, v)
            o = m._linear(z, b + "self_attn.o_proj")
            rec["pattern"].append(p)
            rec["attn_z"].append(z)
            rec["attn_out"].append(o)
            x = x + o
            h = ref.rms_norm(x, m.get(b + "post_attention_layernorm.weight"), eps)
            u = ref.silu(m._linear(h, b + "mlp.gate_proj")) * m._linear(h, b + "mlp.up_proj")
            x = x + m._linear(u, b + "mlp.down_proj")
            rec["resid_post"].append(x.copy())
        return x

# ------------------------------------------------------------------ methods


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def rollout(patterns):
    """(L, H, T, T) -> (T, T): R = Â[L-1] ... Â[0], Â = rownorm(mean_h A + I)."""
    L, H, T, _ = patterns.shape
    R = np.eye(T)
    for layer in range(L):
        A = patterns[layer].astype(np.float64).mean(0) + np.eye(T)
        A = A / A.sum(-1, keepdims=True)
        R = A @ R
    return R


def target_logprob(rec, context, target):
    """log p(target | context) with the reference model (uniform first token
    when the context is empty)."""
    ids = list(context) + list(target)
    V = rec.cfg["vocab_size"]
    if len(ids) < 2:
        return -math.log(V)
    lp = log_softmax(rec.m.forward(ids[:-1]))
    total = 0.0
    for j, tok in enumerate(target):
        row = len(context) + j - 1
        total += -math.log(V) if row < 0 else lp[row, tok]
    return total


def exact_shapley(rec, prompt, target, keep_first):
    first = 1 if keep_first else 0
    players = list(range(first, len(prompt)))
    n = len(players)
    value = {}
    for r in range(n + 1):
        for S in itertools.combinations(players, r):
            ctx = [prompt[i] for i in range(len(prompt)) if i < first or i in S]
            value[frozenset(S)] = target_logprob(rec, ctx, target)
    phi = np.zeros(len(prompt))
    for i in players:
        others = [p for p in players if p != i]
        for r in range(n):
            w = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
            for S in itertools.combinations(others, r):
                phi[i] += w * (value[frozenset(S) | {i}] - value[frozenset(S)])
    return phi


def js_bits(p, q):
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(p > 0, p * np.log2(p / m), 0.0)
        b = np.where(q > 0, q * np.log2(q / m), 0.0)
    return 0.5 * a.sum() + 0.5 * b.sum()

def occlusion(rec, prompt, target, keep_first):
    full = target_logprob(rec, prompt, target)
    out = np.zeros(len(prompt))
    for i in range(1 if keep_first else 0, len(prompt)):
        out[i] = full - target_logprob(rec, prompt[:i] + prompt[i + 1:], target)
    return out


def compare(dir_a, dir_b, ids):
    A, B = Recorder(dir_a).run(ids), Recorder(dir_b).run(ids)
    L = min(len(A["pattern"]), len(B["pattern"]))
    out = np.zeros((2, L))
    for layer in range(L):
        pa, pb = A["pattern"][layer], B["pattern"][layer]
        if pa.shape[0] != pb.shape[0]:
            pa, pb = pa.mean(0, keepdims=True), pb.mean(0, keepdims=True)
        out[0, layer] = np.mean([js_bits(pa[h, q], pb[h, q])
                                 for h in range(pa.shape[0]) for q in range(pa.shape[1])])
        la, lb = A["lens"][layer], B["lens"][layer]
        out[1, layer] = np.mean((np.exp(la) * (la - lb)).sum(-1))
    return out


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def decode_png(path):
    """8-bit RGB, non-interlaced PNG -> (H, W, 3) uint8."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if zlib.crc32(kind + body) != struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]:
            raise ValueError("bad CRC in chunk %r" % kind)
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = hdr
    if depth != 8 or ctype != 2 or interlace:
        raise ValueError("only 8-bit RGB non-interlaced PNGs are decoded here")
    raw, bpp, stride = zlib.decompress(idat), 3, 3 * w
    out, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            pred = [0, a, b, (a + b) // 2, paeth(a, b, c)][f]
            line[i] = (line[i] + pred) & 0xFF
        out.append(bytes(line))
        prev = line
    return np.frombuffer(b"".join(out), np.uint8).reshape(h, w, 3)

# ------------------------------------------------------------------ CLI


def ids_arg(s):
    return [int(t) for t in s.replace(",", " ").split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["record", "check-wo", "bias", "rollout", "shapley", "occlusion",
                                     "compare", "png", "js"])
    ap.add_argument("args", nargs="*")
    ap.add_argument("--ids", type=ids_arg)
    ap.add_argument("--target", type=ids_arg)
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--keep-first", action="store_true")
    a = ap.parse_args()
    if a.mode == "record":
        model_dir, out = a.args
        os.makedirs(out, exist_ok=True)
        for name, arr in Recorder(model_dir).run(a.ids).items():
            np.save(os.path.join(out, name + ".npy"), arr.astype(np.float32))
    elif a.mode == "check-wo":
        model_dir, zf, of = a.args
        rec = Recorder(model_dir)
        W, b = rec.attn_proj(a.layer)
        z, o = np.load(zf).astype(np.float64), np.load(of).astype(np.float64)
        H = rec.cfg.get("n_head") or rec.cfg["num_attention_heads"]
        hd = z.shape[1] // H
        total = sum(z[:, h * hd:(h + 1) * hd] @ W[h * hd:(h + 1) * hd] for h in range(H)) + b
        err = np.abs(total - o).max()
        print("max |sum_h z_h W_O[h] + b - attn_out| = %.3g" % err)
        sys.exit(0 if err <= a.tol else 1)
    elif a.mode == "bias":
        model_dir, out = a.args
        np.save(out, Recorder(model_dir).attn_proj(a.layer)[1].astype(np.float32))
    elif a.mode == "rollout":
        src, out = a.args
        np.save(out, rollout(np.load(src)).astype(np.float32))
    elif a.mode == "shapley":
        model_dir, out = a.args
        phi = exact_shapley(Recorder(model_dir), a.ids, a.target, a.keep_first)
        np.save(out, phi.astype(np.float32))
    elif a.mode == "occlusion":
        model_dir, out = a.args
        occ = occlusion(Recorder(model_dir), a.ids, a.target, a.keep_first)
        np.save(out, occ.astype(np.float32))
    elif a.mode == "compare":
        dir_a, dir_b, out = a.args
        np.save(out, compare(dir_a, dir_b, a.ids).astype(np.float32))
    elif a.mode == "png":
        src, out = a.args
        np.save(out, decode_png(src).astype(np.float32))
    elif a.mode == "js":
        p, q = a.args
        print("%.9g" % js_bits(np.load(p), np.load(q)))


if __name__ == "__main__":
    main()
