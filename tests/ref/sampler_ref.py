#!/usr/bin/env python3
"""Independent numpy reference for src/sampler.c's final distribution.

Written from the documented semantics (Hugging Face generate order):
penalties -> temperature -> top-k -> top-p -> min-p -> renormalise.

Input (argv[1]): cases of exactly three lines each:
    n_vocab temperature top_k top_p min_p repeat presence frequency last_n
    history ids (may be empty)
    logits
Output (argv[2]): one line per case: the probability of every token id.
"""
import sys

import numpy as np


def penalize(logits, history, r, presence, frequency, last_n):
    out = logits.astype(np.float32).copy()
    if last_n == 0:
        return out
    window = history if last_n < 0 else history[-last_n:]
    ids, counts = np.unique(np.array(window, dtype=np.int64), return_counts=True)
    for t, c in zip(ids, counts):
        v = out[t]
        v = v / np.float32(r) if v > 0 else v * np.float32(r)
        v = v - (np.float32(presence) + np.float32(frequency) * np.float32(c))
        out[t] = v
    return out


def final_dist(logits, history, temp, top_k, top_p, min_p, r, pres, freq, last_n):
    n = len(logits)
    l = penalize(logits, history, r, pres, freq, last_n)
    if temp == 0:
        p = np.zeros(n)
        p[int(np.argmax(l))] = 1.0  # numpy argmax returns the first maximum
        return p
    l = (l / np.float32(temp)).astype(np.float64)
    order = sorted(range(n), key=lambda i: (-l[i], i))
    keep = np.zeros(n, dtype=bool)
    keep[order[: top_k if 0 < top_k < n else n]] = True
    w = np.where(keep, np.exp(l - l.max()), 0.0)
    if top_p < 1:
        probs = w / w.sum()
        cum = 0.0
        for rank, i in enumerate(order):
            if not keep[i]:
                continue
            cum += probs[i]
            if cum >= top_p:
                for j in order[rank + 1:]:
                    keep[j] = False
                break
        w = np.where(keep, w, 0.0)
    if min_p > 0:
        probs = w / w.sum()
        w = np.where(probs >= min_p * probs.max(), w, 0.0)
    return w / w.sum()


def main():
    lines = open(sys.argv[1]).read().split("\n")
    lines_out = []
    for c in range(len(lines) // 3):
        head, hist, logits = lines[3 * c: 3 * c + 3]
        f = head.split()
        n, temp, k, p, mp, r, pres, freq, last_n = (
            int(f[0]), float(f[1]), int(f[2]), float(f[3]), float(f[4]),
            float(f[5]), float(f[6]), float(f[7]), int(f[8]))
        history = [int(x) for x in hist.split()]
        lg = np.array([float(x) for x in logits.split()], dtype=np.float32)
        assert len(lg) == n
        d = final_dist(lg, history, np.float32(temp), k, p, mp, r, pres, freq, last_n)
        lines_out.append(" ".join("%.9g" % x for x in d))
    with open(sys.argv[2], "w") as fo:
        fo.write("\n".join(lines_out) + "\n")


if __name__ == "__main__":
    main()
