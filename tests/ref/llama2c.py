"""llama2c.py — reads karpathy/llama2.c checkpoints (model .bin and tokenizer
.bin) and converts a model to a Hugging Face Llama directory, so that the
numpy reference can be checked against llama2.c's own golden output.

Model .bin: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads,
n_kv_heads, vocab_size, seq_len; a negative vocab_size means an untied
classifier), then float32 arrays in this order:
    token_embedding (vocab, dim), rms_att (L, dim), wq (L, dim, dim),
    wk (L, kv_dim, dim), wv (L, kv_dim, dim), wo (L, dim, dim),
    rms_ffn (L, dim), w1 (L, hidden, dim), w2 (L, dim, hidden),
    w3 (L, hidden, dim), rms_final (dim), two unused RoPE tables
    (seq_len * head_size / 2 each), then wcls (vocab, dim) if untied.
Matrices are (out, in), as in PyTorch's Linear. w1 is the SwiGLU gate, w3 the
up projection, w2 the down projection.

RoPE: llama2.c rotates adjacent pairs (2i, 2i+1) of each head ("interleaved",
Meta's layout); Hugging Face rotates (i, i + head_dim/2) ("rotate_half").
The two agree if the rows of wq and wk are permuted within each head so that
row 2i+s moves to row s*head_dim/2 + i (s = 0, 1): the same permutation HF's
own Meta->HF converter applies. wv and wo are not rotated and stay as they are.

Tokenizer .bin: int32 max_token_length, then per token: float32 score,
int32 length, bytes. Pieces "<0xAB>" stand for one raw byte; after BOS (id 1)
a leading space of the next piece is dropped (llama2.c's decode()).
"""
import json
import os
import struct

import numpy as np

import safetensors_np as st


def read_model(path):
    with open(path, "rb") as f:
        buf = f.read()
    dim, hidden, L, H, KV, vocab, seq_len = struct.unpack("<7i", buf[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    hs = dim // H
    data = np.frombuffer(buf, dtype="<f4", offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        a = data[pos:pos + n].reshape(shape)
        pos += n
        return a

    w = {"tok": take(vocab, dim), "rms_att": take(L, dim), "wq": take(L, H * hs, dim),
         "wk": take(L, KV * hs, dim), "wv": take(L, KV * hs, dim), "wo": take(L, dim, H * hs),
         "rms_ffn": take(L, dim), "w1": take(L, hidden, dim), "w2": take(L, dim, hidden),
         "w3": take(L, hidden, dim), "rms_final": take(dim)}
    take(seq_len * hs // 2)
    take(seq_len * hs // 2)
    w["cls"] = w["tok"] if shared else take(vocab, dim)
    if pos != data.size:
        raise ValueError("%s: %d trailing floats" % (path, data.size - pos))
    cfg = dict(dim=dim, hidden=hidden, n_layers=L, n_heads=H, n_kv_heads=KV,
               vocab=vocab, seq_len=seq_len, shared=shared)
    return cfg, w


def interleaved_to_half(w, n_heads):
    """Permutes the rows of a (n_heads*hd, in) q/k weight from interleaved
    RoPE pairs to rotate_half pairs."""
    rows, cols = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, hd // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def to_hf(bin_path, out_dir):
    """Writes config.json + model.safetensors (F32) for a llama2.c model."""
    c, w = read_model(bin_path)
    os.makedirs(out_dir, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": c["dim"], "intermediate_size": c["hidden"],
        "num_hidden_layers": c["n_layers"], "num_attention_heads": c["n_heads"],
        "num_key_value_heads": c["n_kv_heads"], "vocab_size": c["vocab"],
        "max_position_embeddings": c["seq_len"], "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": bool(c["shared"]), "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float32"}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    t = {"model.embed_tokens.weight": w["tok"], "model.norm.weight": w["rms_final"]}
    for i in range(c["n_layers"]):
        b = "model.layers.%d." % i
        t[b + "input_layernorm.weight"] = w["rms_att"][i]
        t[b + "self_attn.q_proj.weight"] = interleaved_to_half(w["wq"][i], c["n_heads"])
        t[b + "self_attn.k_proj.weight"] = interleaved_to_half(w["wk"][i], c["n_kv_heads"])
        t[b + "self_attn.v_proj.weight"] = w["wv"][i]
        t[b + "self_attn.o_proj.weight"] = w["wo"][i]
        t[b + "post_attention_layernorm.weight"] = w["rms_ffn"][i]
        t[b + "mlp.gate_proj.weight"] = w["w1"][i]
        t[b + "mlp.down_proj.weight"] = w["w2"][i]
        t[b + "mlp.up_proj.weight"] = w["w3"][i]
    if not c["shared"]:
        t["lm_head.weight"] = w["cls"]
    st.write_file(os.path.join(out_dir, "model.safetensors"), t, "F32", {"format": "pt"})
    return config


def read_tokenizer(path, vocab_size):
    """Returns the list of pieces (bytes) of a llama2.c tokenizer .bin."""
    with open(path, "rb") as f:
        buf = f.read()
    pos, pieces = 4, []
    for _ in range(vocab_size):
        _score, n = struct.unpack("<fi", buf[pos:pos + 8])
        pieces.append(buf[pos + 8:pos + 8 + n])
        pos += 8 + n
    return pieces


def decode(pieces, ids, bos=1):
    """Bytes of a generated id sequence, as llama2.c prints them."""
    out, prev = b"", bos
    for t in ids:
        p = pieces[t]
        if prev == bos and p.startswith(b" "):
            p = p[1:]
        if len(p) == 6 and p.startswith(b"<0x") and p.endswith(b">"):
            p = bytes([int(p[3:5], 16)])
        out += p
        prev = t
    return out
