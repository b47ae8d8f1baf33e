#!/usr/bin/python3
"""e2e_report.py — turns the files bench/e2e.sh wrote into markdown tables.

    e2e_report.py OUT_DIR... --models "gpt2 tinyllama" --formats "loupe-int8 ..."
                  [--models-dir DIR] [--pp 512] [--tg 128] [--bw 1:14.6,2:26.8]

Several OUT_DIRs merge: a speed measured in a later directory replaces an
earlier one (e.g. 1-thread runs from one session, 2-thread runs from
another); other files come from the last directory that has them.

Speeds are medians over the timed repetitions (tokens / sample time, from
samples_ns, which loupe bench and llama-bench both write). The decode
roofline is bandwidth (membw.jsonl from the membw step, or --bw) / bytes
of weights read per generated token: every
matrix once (the token embedding only when it doubles as the tied output
head; one embedding row is negligible); KV-cache reads are left out (at most
TG positions, < 1 % here).
"""
import argparse
import glob
import json
import os
import re
import statistics

NAMES = {"gpt2": "gpt2-124m", "tinyllama": "tinyllama-1.1b",
         "llama3.2-1b": "llama3.2-1b", "qwen2.5-0.5b": "qwen2.5-0.5b"}
PRETTY = {"gpt2-124m": "GPT-2 124M", "tinyllama-1.1b": "TinyLlama 1.1B",
          "llama3.2-1b": "Llama 3.2 1B", "qwen2.5-0.5b": "Qwen2.5 0.5B"}
ELEM_BYTES = {"F32": 4.0, "F16": 2.0, "BF16": 2.0, "Q8_0": 34 / 32}
SAME_WEIGHTS = {"loupe-int8": "gguf-q8_0", "loupe-f16": "gguf-f16",
                "gguf-q8_0": "gguf-q8_0", "gguf-f16": "gguf-f16"}

# ------------------------------------------------------------------ reading


def load_json(path):
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    with open(path) as f:
        return json.load(f)


def median_ts(rec):
    n = rec["n_prompt"] + rec["n_gen"]
    return statistics.median(n / (ns / 1e9) for ns in rec["samples_ns"])


def find(dirs, name):
    """The path of name in the last of dirs that has it (else in the last)."""
    for d in reversed(dirs):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return os.path.join(dirs[-1], name)


def speeds(dirs, name, pp, tg):
    """{(test, threads): median tok/s} from the loupe or llama-bench JSON
    files name (one run of all tests) and name-t*-{pp,tg}.json (one test
    each) in dirs; later directories win."""
    recs = []
    for d in dirs:
        paths = [os.path.join(d, name)]
        paths += sorted(glob.glob(os.path.join(d, name[:-len(".json")] + "-t*-*.json")))
        for path in paths:
            recs += load_json(path) or []
    out = {}
    for r in recs:
        if r.get("n_depth", 0):
            continue
        if r["n_prompt"] == pp and r["n_gen"] == 0:
            out[("pp", r["n_threads"])] = median_ts(r)
        elif r["n_prompt"] == 0 and r["n_gen"] == tg:
            out[("tg", r["n_threads"])] = median_ts(r)
    return out


def parse_info(path):
    """bytes read per decode token and KV bytes at full context, from
    `loupe info`."""
    if not os.path.exists(path):
        return None
    txt = open(path).read()
    tensors = re.findall(r"^\s+(\S+)\s+(F32|F16|BF16|Q8_0)\s+\[([\d, ]+)\]", txt, re.M)
    tied = "tied to the token embedding" in txt
    per_tok = 0.0
    for name, typ, shape in tensors:
        dims = [int(x) for x in shape.split(",")]
        if len(dims) != 2:
            continue
        nbytes = dims[0] * dims[1] * ELEM_BYTES[typ]
        base = name.replace(".weight", "")
        if base == "position_embd":
            continue
        if base == "token_embd" and not tied:
            continue
        per_tok += nbytes
    m = re.search(r"KV cache ([\d.]+) KiB per token, ([\d.]+) MiB at context (\d+)", txt)
    kv = (float(m.group(2)) * 2**20, int(m.group(3))) if m else (0.0, 0)
    return {"bytes_per_token": per_tok, "kv_bytes": kv[0], "n_ctx": kv[1], "tied": tied}


def max_rss_kb(path):
    if not os.path.exists(path):
        return None
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(path).read())
    return int(m.group(1)) if m else None

# ------------------------------------------------------------------ tables


def fmt(x, nd=1):
    return "—" if x is None else ("%.*f" % (nd, x))


def table(head, rows):
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---:" if i else "---" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def file_of(mdir, name, fmtname):
    kind, typ = fmtname.split("-", 1)
    return os.path.join(mdir, "%s-%s.%s" % (name, typ, kind))


def ab_table(dirs, names, fmts, th, pp, tg, depth):
    """Rows of the interleaved step: ab-NAME-FMT-tT-TEST.jsonl, one record
    per engine and round (later directories win)."""
    rows = []
    for n in names:
        for f in fmts:
            for test in ("pp", "tg", "tgd"):
                for t in th:
                    path = find(dirs, "ab-%s-%s-t%d-%s.jsonl" % (n, f, t, test))
                    if not os.path.exists(path):
                        continue
                    recs = [json.loads(x) for x in open(path) if x.strip()]
                    by = {}
                    for r in recs:
                        by.setdefault(r["round"], {})[r["engine"]] = median_ts(r)
                    pairs = [(v["loupe"], v["llama.cpp"]) for v in by.values()
                             if "loupe" in v and "llama.cpp" in v]
                    if not pairs:
                        continue
                    ratios = [x / y for x, y in pairs]
                    ref = "gguf-q8_0" if f.endswith(("int8", "q8_0")) else "gguf-f16"
                    rows.append([PRETTY[n], os.path.basename(file_of("", n, f)),
                                 os.path.basename(file_of("", n, ref)),
                                 "pp%d" % pp if test == "pp" else "tg%d" % tg if test == "tg"
                                 else "tg%d @ d%d (f16 KV)" % (tg, depth), str(t),
                                 str(len(pairs)),
                                 fmt(statistics.median(x for x, _ in pairs), 2),
                                 fmt(statistics.median(y for _, y in pairs), 2),
                                 "%s (%s-%s)" % (fmt(statistics.median(ratios), 2),
                                                 fmt(min(ratios), 2), fmt(max(ratios), 2))])
    return rows


def roofline_table(dirs, names, fmts, th, tg):
    """Rows of the roofline step: roof-NAME-FMT-tT.jsonl, per round one
    membw record (an anonymous buffer), one filebw record (the model file's
    mapping; runs before it had none) and one decode record per engine. A
    round's ratio is the weight bytes its decode read per second over that
    round's bandwidth."""
    rows = []
    for n in names:
        for f in fmts:
            info = parse_info(find(dirs, "info-%s-%s.txt" % (n, f)))
            for t in th:
                path = find(dirs, "roof-%s-%s-t%d.jsonl" % (n, f, t))
                if not info or not os.path.exists(path):
                    continue
                by = {}
                for r in (json.loads(x) for x in open(path) if x.strip()):
                    v = r["best_gb_s"] if r["engine"] in ("membw", "filebw") else median_ts(r)
                    by.setdefault(r["round"], {})[r["engine"]] = v
                b = info["bytes_per_token"]

                def spread(xs, digits):
                    return "%s (%s-%s)" % (fmt(statistics.median(xs), digits),
                                           fmt(min(xs), digits), fmt(max(xs), digits))
                cells = []
                for eng in ("loupe", "llama.cpp"):
                    for bw in ("membw", "filebw"):
                        gbs = [(v[eng] * b / 1e9, v[bw]) for v in by.values()
                               if eng in v and bw in v]
                        if bw == "membw":
                            cells.append(fmt(statistics.median(x for x, _ in gbs), 1)
                                         if gbs else "—")
                        cells.append(spread([x / y for x, y in gbs], 2) if gbs else "—")
                bws = [v["membw"] for v in by.values() if "membw" in v]
                fbws = [v["filebw"] for v in by.values() if "filebw" in v]
                rows.append([PRETTY[n], os.path.basename(file_of("", n, f)), str(t),
                             str(len(bws)), fmt(b / 1e6, 0), spread(bws, 1),
                             spread(fbws, 1) if fbws else "—"] + cells)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="+")
    ap.add_argument("--models", default="gpt2 tinyllama")
    ap.add_argument("--formats", default="loupe-int8 loupe-f16 gguf-q8_0 gguf-f16")
    ap.add_argument("--models-dir", default="/work/bench-models")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--depth", type=int, default=512, help="DEPTH of the tgd test")
    ap.add_argument("--bw", help="threads:GB/s,... (default: membw.jsonl, else 1:14.6,2:26.8)")
    a = ap.parse_args()
    names = [NAMES[m] for m in a.models.split()]
    fmts = a.formats.split()
    bw = {}
    for d in a.out:  # measured by the membw step, unless --bw is given
        mj = os.path.join(d, "membw.jsonl")
        if os.path.exists(mj):
            bw = {r["threads"]: r["best_gb_s"] for r in map(json.loads, open(mj)) if r}
    if a.bw or not bw:
        bw = {int(k): float(v) for k, v in (x.split(":") for x in (a.bw or "1:14.6,2:26.8").split(","))}
    th = sorted(bw)
    pp, tg = a.pp, a.tg
    S = {}  # (engine, name, fmt) -> speeds
    for n in names:
        for f in fmts:
            S[("loupe", n, f)] = speeds(a.out, "bench-loupe-%s-%s.json" % (n, f), pp, tg)
            if f.startswith("gguf"):
                S[("llama.cpp", n, f)] = speeds(a.out, "bench-llama-%s-%s.json" % (n, f), pp, tg)

    print("## Throughput (median tok/s)\n")
    head = ["model", "engine", "file"] + ["pp%d t=%d" % (pp, t) for t in th] + \
           ["tg%d t=%d" % (tg, t) for t in th]
    rows = []
    for n in names:
        for f in fmts:
            for eng in ("loupe", "llama.cpp"):
                s = S.get((eng, n, f))
                if not s:
                    continue
                rows.append([PRETTY[n], eng, os.path.basename(file_of(a.models_dir, n, f))] +
                            [fmt(s.get(("pp", t))) for t in th] +
                            [fmt(s.get(("tg", t)), 2) for t in th])
    print(table(head, rows))

    print("\n## loupe ÷ llama.cpp (same weights; llama.cpp on the GGUF file)\n")
    head = ["model", "loupe file", "llama.cpp file"] + ["pp t=%d" % t for t in th] + \
           ["tg t=%d" % t for t in th]
    rows = []
    for n in names:
        for f in fmts:
            ref = S.get(("llama.cpp", n, SAME_WEIGHTS[f]))
            s = S.get(("loupe", n, f))
            if not ref or not s:
                continue

            def ratio(k):
                return fmt(s[k] / ref[k], 2) if k in s and k in ref else "—"
            rows.append([PRETTY[n], os.path.basename(file_of(a.models_dir, n, f)),
                         os.path.basename(file_of(a.models_dir, n, SAME_WEIGHTS[f]))] +
                        [ratio(("pp", t)) for t in th] + [ratio(("tg", t)) for t in th])
    print(table(head, rows) if rows else "(no llama-bench results)")

    ab_rows = ab_table(a.out, names, fmts, th, pp, tg, a.depth)
    if ab_rows:
        print("\n## Interleaved rounds: loupe ÷ llama.cpp, median of the per-round ratios\n")
        print("(`e2e.sh ab`: one repetition of each engine per round; the range of the ratios "
              "in brackets; tok/s are the medians of each engine's rounds)\n")
        print(table(["model", "loupe file", "llama.cpp file", "test", "threads", "rounds",
                     "loupe tok/s", "llama.cpp tok/s", "ratio (min-max)"], ab_rows))

    roof_rows = roofline_table(a.out, names, fmts, th, tg)
    if roof_rows:
        print("\n## Decode against the bandwidth of the same round (tg%d)\n" % tg)
        print("(`e2e.sh roofline`: each round runs membw on an anonymous buffer and on the "
              "model file's mapping, then one decode repetition of each engine; GB/s = weight "
              "bytes per token × tok/s; ratios = that ÷ the round's membw and ÷ its file read, "
              "median (min-max) over rounds. loupe reads GGUF Q8_0 weights from its packed "
              "copy in anonymous memory, not from the file's pages)\n")
        print(table(["model", "file", "threads", "rounds", "MB/token", "membw GB/s",
                     "file read GB/s", "loupe GB/s", "loupe ÷ membw", "loupe ÷ file read",
                     "llama.cpp GB/s", "llama.cpp ÷ membw", "llama.cpp ÷ file read"],
                    roof_rows))

    print("\n## Decode roofline (weight bytes per token ÷ bandwidth: %s)\n" %
          ", ".join("%g GB/s at %d thread%s" % (bw[t], t, "s" if t > 1 else "") for t in th))
    head = ["model", "file", "MB/token"] + ["roof t=%d" % t for t in th] + \
           ["loupe t=%d" % t for t in th] + ["llama.cpp t=%d" % t for t in th]
    rows = []
    for n in names:
        for f in fmts:
            info = parse_info(find(a.out, "info-%s-%s.txt" % (n, f)))
            if not info:
                continue
            b = info["bytes_per_token"]
            roof = {t: bw[t] * 1e9 / b for t in th}
            lo = S.get(("loupe", n, f), {})
            ll = S.get(("llama.cpp", n, f), {})

            def pct(s, t):
                v = s.get(("tg", t))
                return "—" if v is None else "%.2f (%d%%)" % (v, round(100 * v / roof[t]))
            rows.append([PRETTY[n], os.path.basename(file_of(a.models_dir, n, f)),
                         fmt(b / 1e6, 0)] + [fmt(roof[t], 2) for t in th] +
                        [pct(lo, t) for t in th] + [pct(ll, t) if ll else "—" for t in th])
    print(table(head, rows) if rows else "(no `loupe info` output: run the rss step)")

    print("\n## Peak RSS of a decode run (loupe run, 1 thread, full context)\n")
    head = ["model", "file", "file MiB", "KV MiB (ctx)", "file + KV MiB", "loupe peak RSS MiB",
            "RSS ÷ (file + KV)", "RSS − file MiB", "llama-bench -n %d RSS MiB" % tg]
    rows = []
    for n in names:
        for f in fmts:
            path = file_of(a.models_dir, n, f)
            info = parse_info(find(a.out, "info-%s-%s.txt" % (n, f)))
            rss = max_rss_kb(find(a.out, "rss-loupe-%s-%s.log" % (n, f)))
            if not info or rss is None or not os.path.exists(path):
                continue
            size = os.path.getsize(path) / 2**20
            kv = info["kv_bytes"] / 2**20
            lrss = max_rss_kb(find(a.out, "rss-llama-%s-%s.log" % (n, f)))
            rows.append([PRETTY[n], os.path.basename(path), fmt(size, 0),
                         "%s (%d)" % (fmt(kv, 0), info["n_ctx"]), fmt(size + kv, 0),
                         fmt(rss / 1024, 0), fmt(rss / 1024 / (size + kv), 2),
                         fmt(rss / 1024 - size, 0), fmt(lrss / 1024, 0) if lrss else "—"])
    print(table(head, rows) if rows else "(no RSS measurements)")

    opens = []
    op = find(a.out, "open.jsonl")
    if os.path.exists(op):
        opens = [json.loads(ln) for ln in open(op) if ln.strip()]
    print("\n## loupe_model_open time (ms)\n")
    rows = [[os.path.basename(o["model"]), fmt(os.path.getsize(o["model"]) / 2**20, 0),
             fmt(o["cold_ms"], 1), fmt(o["warm_min_ms"], 1), fmt(o["warm_median_ms"], 1)]
            for o in opens if os.path.exists(o["model"])]
    print(table(["file", "MiB", "cold (page cache dropped)", "warm min", "warm median"], rows)
          if rows else "(no open times)")

    print("\n## Busy machine: tg%d, core 1 taken by `yes > /dev/null`\n" % tg)
    rows = []
    for n in names:
        for eng, tag, f, suffix, t in (("loupe", "loupe", "loupe-int8", "", 2),
                                       ("llama.cpp", "llama", "gguf-q8_0", "", 2),
                                       ("loupe (pinned to core 0)", "loupe", "loupe-int8", "-t1", 1)):
            name = "%s-%s-%s%s.json" % (tag, n, f, suffix)
            i = speeds(a.out, "busy-idle-" + name, 0, tg).get(("tg", t))
            b = speeds(a.out, "busy-busy-" + name, 0, tg).get(("tg", t))
            if i is None and b is None:
                continue
            rows.append([PRETTY[n], eng, os.path.basename(file_of(a.models_dir, n, f)), t,
                         fmt(i, 2), fmt(b, 2), fmt(b / i, 2) if i and b else "—"])
    print(table(["model", "engine", "file", "threads", "idle tok/s", "busy tok/s", "busy ÷ idle"],
                rows) if rows else "(no busy-machine runs)")

    pools = []
    for d in a.out:
        pj = os.path.join(d, "pool.jsonl")
        if os.path.exists(pj):
            pools = [json.loads(ln) for ln in open(pj) if ln.strip()]
    if pools:
        print("\n## Thread pool: one lp_pool_run round trip (8 empty tasks)\n")
        print(table(["threads", "ns per job"], [[p["threads"], fmt(p["ns_per_job"], 0)]
                                                for p in pools]))

    rows = []
    for d in a.out:
        ct = os.path.join(d, "contention.tsv")
        if os.path.exists(ct):
            rows += [[os.path.basename(d)] + ln.rstrip("\n").split("\t")
                     for ln in open(ct) if ln.strip()]
    if rows:
        print("\n## CPU used by other processes during each run (% of the machine)\n")
        print(table(["dir", "run", "wall s", "own CPU s", "others %"], rows))


if __name__ == "__main__":
    main()
