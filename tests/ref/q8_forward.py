#!/usr/bin/python3
"""q8_forward.py — an independent numpy (float64) forward pass of a Llama GGUF
model as an int8 .loupe file computes it, for loupe's quantization tests.

Weights: every 2-D matmul weight whose rows are whole blocks of 32 is Q8_0
quantized (gguf_np.quantize_q8_0) and used dequantized, d_w * q_w; the rest
(token embedding, norms, matrices with n_in % 32 != 0) stays f32 (with
--f16-embd the embedding is rounded to fp16: quantize's default int8 policy). Activations entering an int8 matmul are quantized per
block of 32 as well (the int8 kernels' design: q = round(x / dx) as Q8_0, but
the scale dx = max|x| / 127 kept in f32, not rounded to fp16), so
    y[r] = sum_b (sum_j qx[b,j] * qw[r,b,j]) * f32(dx[b]) * f16(dw[r,b]).
Llama semantics from the GGUF conventions: RMSNorm, RoPE on interleaved
pairs (2i, 2i+1) with theta^(-2i/head_dim), causal grouped-query attention,
SwiGLU MLP, separate or tied output head.

Usage: q8_forward.py MODEL.gguf OUT.f32 ID,ID,... [--int8-head] [--f16-embd] [--exact]
    writes (T, n_vocab) float32 little-endian logits
    --int8-head  a tied head is int8 too (a GGUF Q8_0 token embedding)
    --f16-embd   the token embedding rounded to fp16 (numpy's float16), as
                 quantize stores it by default
    --exact      no quantization at all: every matmul in float64 on the
                 file's weights (the int8 path's f32 counterpart)
    --ties=FILE  also writes (T) float32: for each position, how close any
                 activation it quantized came to a rounding tie, min over
                 blocks and layers of |x / dx - round-down - 1/2|. An engine
                 computing in f32 may round those within its own error the
                 other way (one q step apart), so exact agreement is only
                 expected where this distance is not tiny.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_np  # noqa: E402


def q8_blocks(x):
    """(rows, cols) -> (int8 q (rows, cols), fp16-rounded d (rows, cols/32))."""
    raw = gguf_np.quantize_q8_0(x.astype(np.float32))
    blk = np.frombuffer(raw, dtype=[("d", "<u2"), ("qs", "i1", (32,))])
    rows, cols = x.shape
    q = blk["qs"].astype(np.float64).reshape(rows, cols)
    d = blk["d"].view(np.float16).astype(np.float64).reshape(rows, cols // 32)
    return q, d


def q8_act(x):
    """Activations (rows, cols) -> (q (rows, cols), f32 d (rows, cols/32)):
    the same q as Q8_0, the scale max|x| / 127 computed in f32 and kept."""
    q, _ = q8_blocks(x)
    rows, cols = x.shape
    amax = np.abs(x.astype(np.float32)).reshape(rows, cols // 32, 32).max(-1)
    return q, (amax / np.float32(127)).astype(np.float32).astype(np.float64)


EXACT = False  # --exact: no quantization
F16_EMBD = False  # --f16-embd: the token embedding rounded to fp16
TIES = []      # per Linear call: (T) distance of its activations to a tie


class Linear:
    def __init__(self, w, int8=True):  # w: (n_out, n_in) float32
        self.q8 = int8 and not EXACT and w.shape[1] % 32 == 0
        if self.q8:
            self.q, self.d = q8_blocks(w)
        else:
            self.w = w.astype(np.float64)

    def __call__(self, x):  # x: (T, n_in)
        if not self.q8:
            return x @ self.w.T
        qx, dx = q8_act(x)
        T, n = x.shape
        nb = n // 32
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.abs(x.astype(np.float32).astype(np.float64).reshape(T, nb, 32) / dx[:, :, None])
        tie = np.abs(y - np.floor(y) - 0.5)
        TIES.append(np.where(np.isfinite(tie), tie, 0.5).reshape(T, n).min(-1))
        # per-block integer dots: (T, out, nb)
        dots = np.einsum("tbj,rbj->trb", qx.reshape(T, nb, 32), self.q.reshape(-1, nb, 32))
        return (dots * dx[:, None, :] * self.d[None, :, :]).sum(-1)


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, pos, theta):  # x: (T, heads, hd), interleaved pairs
    hd = x.shape[-1]
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.asarray(pos, dtype=np.float64)[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def forward(path, ids, int8_head=False):
    _, kv, tensors, _ = gguf_np.read_gguf(path)
    meta = {k: v for k, _, v in kv}
    W = {}
    for name, t, ne, raw in tensors:
        assert t == gguf_np.T_F32, name
        shape = list(reversed(ne))
        W[name[:-len(".weight")] if name.endswith(".weight") else name] = \
            np.frombuffer(raw, dtype="<f4").reshape(shape)
    if F16_EMBD:
        W["token_embd"] = W["token_embd"].astype(np.float16).astype(np.float32)
    D = meta["llama.embedding_length"]
    L = meta["llama.block_count"]
    H = meta["llama.attention.head_count"]
    KV = meta.get("llama.attention.head_count_kv", H)
    eps = meta["llama.attention.layer_norm_rms_epsilon"]
    theta = meta.get("llama.rope.freq_base", 10000.0)
    hd = D // H
    T = len(ids)
    pos = np.arange(T)
    x = W["token_embd"][ids].astype(np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(L):
        p = "blk.%d." % l
        h = rms_norm(x, W[p + "attn_norm"], eps)
        q = rope(Linear(W[p + "attn_q"])(h).reshape(T, H, hd), pos, theta)
        k = rope(Linear(W[p + "attn_k"])(h).reshape(T, KV, hd), pos, theta)
        v = Linear(W[p + "attn_v"])(h).reshape(T, KV, hd)
        z = np.empty((T, H, hd))
        for i in range(H):
            j = i // (H // KV)
            s = q[:, i] @ k[:, j].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            z[:, i] = (s / s.sum(-1, keepdims=True)) @ v[:, j]
        x = x + Linear(W[p + "attn_output"])(z.reshape(T, D))
        h = rms_norm(x, W[p + "ffn_norm"], eps)
        g = Linear(W[p + "ffn_gate"])(h)
        u = Linear(W[p + "ffn_up"])(h)
        x = x + Linear(W[p + "ffn_down"])(g / (1 + np.exp(-g)) * u)
    x = rms_norm(x, W["output_norm"], eps)
    if "output" in W:
        return Linear(W["output"])(x)
    return Linear(W["token_embd"], int8=int8_head)(x)  # tied: the embedding


def main():
    global EXACT, F16_EMBD
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    EXACT = "--exact" in sys.argv
    F16_EMBD = "--f16-embd" in sys.argv
    ids = [int(t) for t in args[2].split(",")]
    forward(args[0], ids, "--int8-head" in sys.argv).astype("<f4").tofile(args[1])
    for a in sys.argv:
        if a.startswith("--ties="):
            ties = np.minimum.reduce(TIES) if TIES else np.full(len(ids), 0.5)
            ties.astype("<f4").tofile(a[len("--ties="):])


if __name__ == "__main__":
    main()
