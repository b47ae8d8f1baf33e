"""safetensors_np.py — a minimal safetensors reader/writer in numpy.

File layout (the safetensors format):
    u64 little-endian N | N bytes of JSON header | data buffer
The header maps each tensor name to {"dtype", "shape", "data_offsets": [b, e]}
(offsets relative to the start of the data buffer) and may hold a
"__metadata__" object of strings. We pad the header with spaces so that the
data buffer starts 8-byte aligned, as the reference writer does.

Supported dtypes: F32, F16, BF16. numpy has no bfloat16, so BF16 values are
carried as uint16 bit patterns: reading widens them to float32 exactly
(bits << 16); writing rounds float32 to nearest-even.

A sharded checkpoint is several files plus model.safetensors.index.json:
    {"metadata": {"total_size": bytes}, "weight_map": {name: file, ...}}
"""
import json
import os
import struct

import numpy as np

# ------------------------------------------------------------------ dtypes

DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2}
NP_STORAGE = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def f32_to_bf16_bits(x):
    """float32 array -> uint16 bfloat16 bit patterns, round to nearest even."""
    bits = np.ascontiguousarray(x, dtype="<f4").view("<u4").astype(np.uint64)
    rounding = 0x7FFF + ((bits >> 16) & 1)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    out[nan] = 0x7FC0
    return out


def bf16_bits_to_f32(bits):
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


def encode(x, dtype):
    """Array of any float type -> raw little-endian bytes of dtype."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "F32":
        return x.astype("<f4").tobytes()
    if dtype == "F16":
        return x.astype("<f2").tobytes()
    if dtype == "BF16":
        return f32_to_bf16_bits(x).astype("<u2").tobytes()
    raise ValueError("unsupported dtype %s" % dtype)


def decode(raw, dtype, shape):
    """Raw bytes -> float32 array of shape (exact widening)."""
    a = np.frombuffer(raw, dtype=NP_STORAGE[dtype]).reshape(shape)
    if dtype == "BF16":
        return bf16_bits_to_f32(a)
    return a.astype(np.float32)


def quantize(x, dtype):
    """What x becomes after a round trip through dtype (as float32)."""
    x = np.asarray(x, dtype=np.float32)
    return decode(encode(x, dtype), dtype, x.shape)

# ------------------------------------------------------------------ writing


class TensorSpec:
    """One tensor to write: values come from make() only when written, so a
    large checkpoint never has to be held in memory at once."""

    def __init__(self, name, shape, dtype, make):
        self.name, self.shape, self.dtype, self.make = name, tuple(shape), dtype, make

    @property
    def nbytes(self):
        n = 1
        for d in self.shape:
            n *= d
        return n * DTYPE_SIZE[self.dtype]


def write_specs(path, specs, metadata=None):
    """Writes a list of TensorSpec to one .safetensors file."""
    header, off = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for s in specs:
        header[s.name] = {"dtype": s.dtype, "shape": list(s.shape),
                          "data_offsets": [off, off + s.nbytes]}
        off += s.nbytes
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - (8 + len(hj)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for s in specs:
            x = np.asarray(s.make(), dtype=np.float32)
            if x.shape != s.shape:
                raise ValueError("%s: made shape %s, declared %s" % (s.name, x.shape, s.shape))
            raw = encode(x, s.dtype)
            assert len(raw) == s.nbytes
            f.write(raw)


def write_file(path, tensors, dtype="F32", metadata=None):
    """tensors: dict name -> array (or name -> (array, dtype))."""
    specs = []
    for name, v in tensors.items():
        arr, dt = v if isinstance(v, tuple) else (v, dtype)
        arr = np.asarray(arr)
        specs.append(TensorSpec(name, arr.shape, dt, lambda a=arr: a))
    write_specs(path, specs, metadata)


def write_checkpoint(dirpath, specs, n_shards=1, metadata=None):
    """Writes model.safetensors, or n_shards files model-0000i-of-0000n plus
    model.safetensors.index.json, splitting the tensor list into contiguous
    groups of roughly equal byte size."""
    os.makedirs(dirpath, exist_ok=True)
    meta = dict(metadata or {"format": "pt"})
    if n_shards <= 1:
        write_specs(os.path.join(dirpath, "model.safetensors"), specs, meta)
        return
    total = sum(s.nbytes for s in specs)
    groups, cur, acc = [], [], 0
    for s in specs:
        cur.append(s)
        acc += s.nbytes
        if acc >= total * (len(groups) + 1) / n_shards and len(groups) < n_shards - 1:
            groups.append(cur)
            cur = []
    groups.append(cur)
    n = len(groups)
    weight_map = {}
    for i, g in enumerate(groups):
        fname = "model-%05d-of-%05d.safetensors" % (i + 1, n)
        write_specs(os.path.join(dirpath, fname), g, meta)
        for s in g:
            weight_map[s.name] = fname
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(os.path.join(dirpath, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)

# ------------------------------------------------------------------ reading


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return header, 8 + n


def read_file(path):
    """Returns (dict name -> float32 array, dict name -> dtype, metadata)."""
    header, base = read_header(path)
    meta = header.pop("__metadata__", {})
    out, dtypes = {}, {}
    with open(path, "rb") as f:
        buf = f.read()
    for name, h in header.items():
        dt = h["dtype"]
        if dt not in DTYPE_SIZE:
            raise ValueError("%s: %s: unsupported dtype %s" % (path, name, dt))
        b, e = h["data_offsets"]
        shape = tuple(h["shape"])
        n = 1
        for d in shape:
            n *= d
        if e - b != n * DTYPE_SIZE[dt] or base + e > len(buf):
            raise ValueError("%s: %s: bad data_offsets" % (path, name))
        out[name] = decode(buf[base + b:base + e], dt, shape)
        dtypes[name] = dt
    return out, dtypes, meta


def read_checkpoint(dirpath):
    """Reads every tensor of a HF directory (single file or sharded)."""
    index = os.path.join(dirpath, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for fn in files:
        t, _, _ = read_file(os.path.join(dirpath, fn))
        for k in t:
            if k in tensors:
                raise ValueError("%s: tensor %s appears twice" % (fn, k))
        tensors.update(t)
    return tensors
