#!/usr/bin/python3
"""selfcheck.py — proves the numpy reference right on real trained models,
independently of loupe:

  1. slm-gpt2-char (HF safetensors, GPT-2 blocks, exact GELU, tied head):
     greedy decoding from every prompt in greedy.json reproduces greedy_ids.
  2. stories260K (llama2.c checkpoint, converted here to a HF Llama directory
     with q/k rows permuted from interleaved to rotate_half RoPE pairs):
     greedy decoding from BOS reproduces llama2.c's greedy-from-bos.txt
     (200 tokens, decoded with tok512.bin), byte for byte.

Usage: selfcheck.py SCRATCH_DIR   (SHARED from $LOUPE_SHARED or ../../../shared)
Exits 0 when both hold, 1 (with a message) otherwise.
"""
import json
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama2c  # noqa: E402
import reference  # noqa: E402
from synth import shared_dir  # noqa: E402


def check_slm(shared):
    d = os.path.join(shared, "models", "slm-gpt2-char")
    with open(os.path.join(d, "greedy.json")) as f:
        cases = json.load(f)["cases"]
    model = reference.Model(d)
    ok = True
    for c in cases:
        got = reference.greedy(model, c["prompt_ids"], len(c["greedy_ids"]))
        same = sum(1 for a, b in zip(got, c["greedy_ids"]) if a == b)
        print("slm-gpt2-char %r: %d/%d greedy ids match" % (c["prompt"], same, len(got)))
        ok &= got == c["greedy_ids"]
    return ok


def check_stories(shared, scratch):
    d = os.path.join(shared, "models", "stories260K")
    hf = os.path.join(scratch, "stories260K-hf")
    cfg = llama2c.to_hf(os.path.join(d, "stories260K.bin"), hf)
    pieces = llama2c.read_tokenizer(os.path.join(d, "tok512.bin"), cfg["vocab_size"])
    with open(os.path.join(d, "greedy-from-bos.txt"), "rb") as f:
        gold = f.read()
    ids = reference.greedy(reference.Model(hf), [1], 200)
    text = llama2c.decode(pieces, ids)
    # llama2.c ends its output with a newline after the last token.
    ok = gold == text + b"\n" and 1 not in ids
    n = 0
    while n < min(len(gold), len(text)) and gold[n] == text[n]:
        n += 1
    print("stories260K: %d/%d golden bytes reproduced" % (n, len(gold) - 1))
    return ok


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: selfcheck.py SCRATCH_DIR")
    os.makedirs(sys.argv[1], exist_ok=True)
    shared = shared_dir()
    ok = check_slm(shared)
    ok = check_stories(shared, sys.argv[1]) and ok
    print("selfcheck:", "OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
