#!/usr/bin/python3
"""gguf_np.py — a small GGUF v3 reader/writer and a Q8_0 quantizer in numpy,
written from the GGUF specification (ggml docs/gguf.md) for loupe's tests.
Independent of loupe's C code, so the two can check each other.

Q8_0: blocks of 32 values along a row; d = max|x| / 127 (float32),
q = round-half-away-from-zero(x * (1/d)) (0 when d == 0); the block is the
fp16 bits of d followed by the 32 int8 q (34 bytes).

Usage:
  gguf_np.py q8 SRC.gguf DST.gguf
      DST = SRC with every 2-D F32 tensor whose rows are whole 32-blocks
      stored as Q8_0 (everything else, metadata included, unchanged)
  gguf_np.py deq SRC.gguf DST.gguf
      DST = SRC with every Q8_0 tensor dequantized to F32
  gguf_np.py dump-q8 SRC OUTDIR [NAME=SRCNAME ...]
      SRC a GGUF file or a GPT-2 safetensors dir: writes OUTDIR/NAME.q8, the
      Q8_0 blocks of the tensor as loupe stores it, for each mapping given
      (see gpt2_weight for the safetensors names)
  gguf_np.py q8-vectors N IN.f32 OUT.q8
      N random blocks of 32 values full of near-ties (x = (k + 1/2) * d):
      the f32 input and its Q8_0 blocks
  gguf_np.py raw SRC.gguf NAME OUT
      writes the raw data bytes of tensor NAME
"""
import json
import os
import struct
import sys

import numpy as np

GGUF_MAGIC = b"GGUF"
T_F32, T_F16, T_Q8_0, T_BF16 = 0, 1, 8, 30

# metadata value types: (struct format, size) for the fixed-size ones
_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
          10: "<Q", 11: "<q", 12: "<d"}
V_STRING, V_ARRAY = 8, 9

# ------------------------------------------------------------------ Q8_0


def quantize_q8_0(x):
    """x: (rows, cols) float32, cols % 32 == 0 -> bytes of Q8_0 blocks."""
    x = np.asarray(x, dtype=np.float32)
    rows, cols = x.shape
    assert cols % 32 == 0
    b = x.reshape(rows * cols // 32, 32)
    amax = np.abs(b).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    y = (b * inv[:, None]).astype(np.float32)
    # round half away from zero (C roundf), not numpy's half-to-even; the
    # fractional part y - trunc(y) is exact, so the tie test is too
    t = np.trunc(y)
    frac = np.abs(y - t)
    q = np.where(frac >= 0.5, t + np.sign(y), t)
    out = np.zeros(b.shape[0], dtype=[("d", "<u2"), ("qs", "i1", (32,))])
    out["d"] = d.astype(np.float16).view(np.uint16)
    out["qs"] = q.astype(np.int8)
    return out.tobytes()


def dequantize_q8_0(raw, rows, cols):
    blk = np.frombuffer(raw, dtype=[("d", "<u2"), ("qs", "i1", (32,))])
    d = blk["d"].view(np.float16).astype(np.float32)
    return (d[:, None] * blk["qs"].astype(np.float32)).reshape(rows, cols)

# ------------------------------------------------------------------ reader


class Reader:
    def __init__(self, buf, off=0):
        self.b, self.o = buf, off

    def take(self, n):
        v = self.b[self.o:self.o + n]
        assert len(v) == n, "truncated GGUF"
        self.o += n
        return v

    def fmt(self, f):
        n = struct.calcsize(f)
        return struct.unpack(f, self.take(n))[0]

    def string(self):
        return self.take(self.fmt("<Q"))

    def value(self, t):
        if t in _FIXED:
            return self.fmt(_FIXED[t])
        if t == V_STRING:
            return self.string()
        assert t == V_ARRAY, "unknown GGUF value type %d" % t
        et = self.fmt("<I")
        n = self.fmt("<Q")
        return (et, [self.value(et) for _ in range(n)])


def read_gguf(path):
    """-> (version, kv [(key, type, value)], tensors [(name, type, ne, raw)], alignment)"""
    buf = open(path, "rb").read()
    r = Reader(buf)
    assert r.take(4) == GGUF_MAGIC
    version = r.fmt("<I")
    n_t, n_kv = r.fmt("<Q"), r.fmt("<Q")
    kv = []
    for _ in range(n_kv):
        k = r.string().decode()
        t = r.fmt("<I")
        kv.append((k, t, r.value(t)))
    align = 32
    for k, t, v in kv:
        if k == "general.alignment":
            align = v
    infos = []
    for _ in range(n_t):
        name = r.string().decode()
        nd = r.fmt("<I")
        ne = [r.fmt("<Q") for _ in range(nd)]
        infos.append((name, ne, r.fmt("<I"), r.fmt("<Q")))
    base = (r.o + align - 1) // align * align
    tensors = []
    for name, ne, t, off in infos:
        n = int(np.prod(ne))
        size = {T_F32: 4 * n, T_F16: 2 * n, T_BF16: 2 * n, T_Q8_0: n // 32 * 34}[t]
        tensors.append((name, t, ne, buf[base + off:base + off + size]))
    return version, kv, tensors, align

# ------------------------------------------------------------------ writer


def _put_value(out, t, v):
    if t in _FIXED:
        out += struct.pack(_FIXED[t], v)
    elif t == V_STRING:
        out += struct.pack("<Q", len(v)) + v
    else:
        et, items = v
        out += struct.pack("<IQ", et, len(items))
        for it in items:
            _put_value(out, et, it)


def write_gguf(path, kv, tensors, align=32):
    out = bytearray(GGUF_MAGIC + struct.pack("<IQQ", 3, len(tensors), len(kv)))
    for k, t, v in kv:
        kb = k.encode()
        out += struct.pack("<Q", len(kb)) + kb + struct.pack("<I", t)
        _put_value(out, t, v)
    off = 0
    offsets = []
    for name, t, ne, raw in tensors:
        nb = name.encode()
        out += struct.pack("<Q", len(nb)) + nb + struct.pack("<I", len(ne))
        out += b"".join(struct.pack("<Q", e) for e in ne)
        out += struct.pack("<IQ", t, off)
        offsets.append(off)
        off = (off + len(raw) + align - 1) // align * align
    out += b"\0" * ((-len(out)) % align)
    base = len(out)
    for (name, t, ne, raw), o in zip(tensors, offsets):
        out += b"\0" * (base + o - len(out))
        out += raw
    with open(path, "wb") as f:
        f.write(out)

# ------------------------------------------------------------------ commands


def to_q8(src, dst):
    _, kv, tensors, align = read_gguf(src)
    new = []
    for name, t, ne, raw in tensors:
        if t == T_F32 and len(ne) == 2 and ne[0] % 32 == 0:
            x = np.frombuffer(raw, dtype="<f4").reshape(ne[1], ne[0])
            new.append((name, T_Q8_0, ne, quantize_q8_0(x)))
        else:
            new.append((name, t, ne, raw))
    write_gguf(dst, kv, new, align)


def to_f32(src, dst):
    _, kv, tensors, align = read_gguf(src)
    new = []
    for name, t, ne, raw in tensors:
        if t == T_Q8_0:
            x = dequantize_q8_0(raw, ne[1], ne[0])
            new.append((name, T_F32, ne, x.astype("<f4").tobytes()))
        else:
            new.append((name, t, ne, raw))
    write_gguf(dst, kv, new, align)


def read_safetensors(path):
    buf = open(path, "rb").read()
    n = struct.unpack("<Q", buf[:8])[0]
    hdr = json.loads(buf[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32"
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(buf[8 + n + a:8 + n + b], dtype="<f4").reshape(v["shape"])
    return out


def gpt2_weight(st, spec):
    """spec: 'h.L.attn.c_attn:q|k|v' or 'h.L.mlp.c_fc' etc.: a Conv1D (in, out)
    weight as loupe's (out, in) matrix, a fused q|k|v split by thirds."""
    name, _, part = spec.partition(":")
    w = st["transformer." + name + ".weight"].T
    if part:
        n = w.shape[0] // 3
        w = w["qkv".index(part) * n:][:n]
    return np.ascontiguousarray(w)


def dump_q8(src, outdir, maps):
    os.makedirs(outdir, exist_ok=True)
    if os.path.isdir(src):
        st = read_safetensors(os.path.join(src, "model.safetensors"))
        get = lambda s: gpt2_weight(st, s)  # noqa: E731
    else:
        _, _, tensors, _ = read_gguf(src)
        by = {n: (t, ne, raw) for n, t, ne, raw in tensors}

        def get(s):
            t, ne, raw = by[s]
            assert t == T_F32
            return np.frombuffer(raw, dtype="<f4").reshape(ne[1], ne[0])
    for m in maps:
        dst, _, s = m.partition("=")
        with open(os.path.join(outdir, dst + ".q8"), "wb") as f:
            f.write(quantize_q8_0(get(s)))


def q8_vectors(n, inp, out):
    rng = np.random.default_rng(1234)
    amax = rng.uniform(0.001, 20.0, n).astype(np.float32)
    d = (amax / np.float32(127)).astype(np.float32)
    k = rng.integers(-127, 127, (n, 32)).astype(np.float32) + np.float32(0.5)
    x = (k * d[:, None]).astype(np.float32)
    x[:, 0] = amax * np.where(rng.random(n) < 0.5, -1, 1).astype(np.float32)
    x[::7, 5] = 0
    x[::97] = 0  # whole zero blocks
    x.astype("<f4").tofile(inp)
    with open(out, "wb") as f:
        f.write(quantize_q8_0(x.reshape(1, n * 32)))


def main():
    cmd = sys.argv[1]
    if cmd == "q8":
        to_q8(sys.argv[2], sys.argv[3])
    elif cmd == "deq":
        to_f32(sys.argv[2], sys.argv[3])
    elif cmd == "dump-q8":
        dump_q8(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif cmd == "q8-vectors":
        q8_vectors(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif cmd == "raw":
        _, _, tensors, _ = read_gguf(sys.argv[2])
        raw = [r for n, t, ne, r in tensors if n == sys.argv[3]][0]
        open(sys.argv[4], "wb").write(raw)
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
