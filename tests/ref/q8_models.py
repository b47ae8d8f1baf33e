#!/usr/bin/python3
"""q8_models.py — small Llama GGUF models whose int8 matrices have awkward
row counts, for tests/test_loader.c (packing Q8_0 rows into groups of 16).

Usage: q8_models.py OUTDIR

Random weights (seeded), the stories260K tokenizer, dim 64, 8 query heads
of 8, 1 KV head (k and v have 8 rows), feed-forward 96, 2 layers, vocabulary
517 (the output matrix ends in a group of 5 rows):
  OUTDIR/odd.gguf        every matrix, the token embedding and the output
                         Q8_0 (gguf_np.quantize_q8_0)
  OUTDIR/odd-fused.gguf  the same bytes with q|k|v stored as one attn_qkv
                         (rows 64 + 8 + 8: the k/v split falls inside a group)
  OUTDIR/odd-tied.gguf   odd.gguf without output.weight (the head is the
                         Q8_0 token embedding)
  OUTDIR/odd-deq.gguf    odd.gguf with every Q8_0 tensor dequantized to F32
  OUTDIR/odd-tied-deq.gguf  the same for odd-tied.gguf
  OUTDIR/wide.gguf       one layer of dim 512, feed-forward 1024, vocabulary
                         8192, all Q8_0 (10 MB): large enough that the file
                         pages of its matrices show in a resident-set count
"""
import os
import sys

import numpy as np

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_np as g  # noqa: E402

SHARED = os.environ.get("LOUPE_SHARED",
                        os.path.join(os.path.dirname(__file__), "../../../shared"))
STORIES = os.path.join(SHARED, "models/stories260K/stories260K.gguf")
ODD = dict(C=64, H=8, KV=1, F=96, L=2, V=517)
WIDE = dict(C=512, H=8, KV=2, F=1024, L=1, V=8192)
CTX = 128
U32, F32 = 4, 6

rng = np.random.default_rng(517)


def mat(rows, cols):
    return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)


def norm(C):
    return (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)


def kvs(C, H, KV, F, L, V):
    _, kv, _, _ = g.read_gguf(STORIES)
    out = [("general.architecture", g.V_STRING, b"llama")]
    for key, v in [("context_length", CTX), ("embedding_length", C), ("block_count", L),
                   ("feed_forward_length", F), ("attention.head_count", H),
                   ("attention.head_count_kv", KV), ("rope.dimension_count", C // H)]:
        out.append(("llama." + key, U32, v))
    out += [("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
            ("llama.rope.freq_base", F32, 10000.0)]
    return out + [e for e in kv if e[0].startswith("tokenizer.")]


def q8(name, x):
    return (name, g.T_Q8_0, [x.shape[1], x.shape[0]], g.quantize_q8_0(x))


def f32(name, x):
    return (name, g.T_F32, list(reversed(x.shape)), x.astype("<f4").tobytes())


def model(C, H, KV, F, L, V, fused=False, tied=False):
    """Tensors of the model; the same random draws whatever the variant."""
    global rng
    rng = np.random.default_rng(517)
    HD = C // H
    t = [q8("token_embd.weight", mat(V, C)), f32("output_norm.weight", norm(C))]
    out = q8("output.weight", mat(V, C))
    if not tied:
        t.append(out)
    for l in range(L):
        p = "blk.%d." % l
        t.append(f32(p + "attn_norm.weight", norm(C)))
        q, k, v = (q8(p + "attn_" + n + ".weight", mat(r, C))
                   for n, r in (("q", H * HD), ("k", KV * HD), ("v", KV * HD)))
        if fused:  # Q8_0 rows are independent: the fused matrix is the bytes in a row
            t.append((p + "attn_qkv.weight", g.T_Q8_0, [C, (H + 2 * KV) * HD],
                      q[3] + k[3] + v[3]))
        else:
            t += [q, k, v]
        t.append(q8(p + "attn_output.weight", mat(C, H * HD)))
        t.append(f32(p + "ffn_norm.weight", norm(C)))
        t.append(q8(p + "ffn_gate.weight", mat(F, C)))
        t.append(q8(p + "ffn_up.weight", mat(F, C)))
        t.append(q8(p + "ffn_down.weight", mat(C, F)))
    return t


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    kv = kvs(**ODD)
    for name, kw in [("odd", {}), ("odd-fused", {"fused": True}), ("odd-tied", {"tied": True})]:
        g.write_gguf(os.path.join(out, name + ".gguf"), kv, model(**ODD, **kw))
    g.write_gguf(os.path.join(out, "wide.gguf"), kvs(**WIDE), model(**WIDE))
    for name in ("odd", "odd-tied"):
        g.to_f32(os.path.join(out, name + ".gguf"), os.path.join(out, name + "-deq.gguf"))


if __name__ == "__main__":
    main()
