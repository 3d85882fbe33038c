#!/usr/bin/env python3
"""Collects sqa-e2e-bench and hf_baseline.py JSON files into gpu_e2e.md + gpu_e2e.json.

usage: report.py RESULTS_DIR OUT_PREFIX "command line that produced them"
RESULTS_DIR holds e2e_<LAYOUT>.json (engine) and hf_<LAYOUT>.json (transformers, MHA/GQA).
Ratios: engine over transformers on the same weights (MHA, GQA; SQA-family rows are compared
with transformers on MHA, the layout they replace), and each layout's prefill speed-up over the
engine's own MHA at the largest length against the target 0.85 * H / Hq.
"""
import datetime
import glob
import json
import os
import subprocess
import sys

ORDER = ["MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "rSQA"]


def load(pattern):
    out = {}
    for fn in glob.glob(pattern):
        layout = os.path.basename(fn).split("_", 1)[1].rsplit(".", 1)[0]
        with open(fn) as f:
            out[layout] = json.load(f)
    return out


def by_tokens(rows):
    return {r["tokens"]: r["tokens_per_second"] for r in rows}


def by_batch(rows, graphs=None):
    """tokens/s by batch; graphs=True/False keeps the rows measured with CUDA graphs on/off (rows of
    older runs, without the key, were measured without graphs)."""
    return {r["batch"]: r["tokens_per_second"] for r in rows
            if graphs is None or r.get("cuda_graphs", False) == graphs}


def engine_decode(rows):
    """The engine's decode rows as served: with CUDA graphs when measured, else without."""
    on = by_batch(rows, True)
    return on if on else by_batch(rows, False)


def gpu_name(src):
    # run_e2e.sh records the GPU of the run in RESULTS_DIR/gpu.txt (so the report can be remade elsewhere).
    path = os.path.join(src, "gpu.txt")
    if os.path.exists(path):
        with open(path) as f:
            name = f.read().strip()
        if name:
            return name
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def main():
    src, prefix, command = sys.argv[1], sys.argv[2], sys.argv[3]
    eng = load(os.path.join(src, "e2e_*.json"))
    hf = load(os.path.join(src, "hf_*.json"))
    layouts = [l for l in ORDER if l in eng]
    sizes = sorted({r["tokens"] for e in eng.values() for r in e["prefill"]})
    batches = sorted({r["batch"] for e in eng.values() for r in e["decode"]})
    big = sizes[-1] if sizes else None
    mha = by_tokens(eng["MHA"]["prefill"]) if "MHA" in eng else {}
    hf_mha = by_tokens(hf["MHA"]["prefill"]) if "MHA" in hf else {}

    def k(n):
        return "%dk" % (n // 1024) if n % 1024 == 0 else str(n)

    lines = []
    lines.append("# End-to-end throughput on one GPU: sqa-serve CUDA engine vs Hugging Face transformers")
    lines.append("")
    lines.append("- date: %s" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    lines.append("- GPU: %s" % gpu_name(src))
    if hf:
        h0 = next(iter(hf.values()))
        lines.append("- transformers %s, torch %s, attn_implementation=sdpa, bf16" % (h0.get("transformers"), h0.get("torch")))
    e0 = next(iter(eng.values())) if eng else {}
    lines.append("- model: sqa-mkmodel --preset 1b --dtype bf16 (d=%s, %s layers, H=%s, head_dim %s), random weights"
                 % (e0.get("hidden_size"), e0.get("layers"), e0.get("num_attention_heads"), e0.get("head_dim")))
    skinny = e0.get("skinny_gemm", False)
    lines.append("- engine: bf16, cuBLASLt GEMMs%s, own attention kernels, prefill chunk %s tokens, KV block %s"
                 % (" (decode steps of up to 8 rows: the skinny GEMM kernel, with q/k/v and gate/up/SwiGLU fused;"
                    " 9-32 rows: q/k/v in one launch of its wide form%s)"
                    % ("" if e0.get("skinny_stream", "off") == "off" else
                       ", gate and up in one launch of its stream form and the LM head on it too")
                    if skinny else "", e0.get("chunk_tokens"), e0.get("block_size")))
    graphs_measured = any(r.get("cuda_graphs") for e in eng.values() for r in e["decode"])
    lines.append("- decode: batch B of %s-token prompts, %s greedy steps timed (%s)"
                 % (e0["decode"][0]["context"] if e0.get("decode") else "?", e0["decode"][0]["steps"] if e0.get("decode") else "?",
                    "tokens sampled on the GPU; `engine` = decode steps as CUDA graphs, `no graphs` = the same steps"
                    " launched op by op" if graphs_measured else "logits to host each step, no CUDA graphs"))
    sustain = sorted({e.get("sustain_s") for e in list(eng.values()) + list(hf.values()) if e.get("sustain_s") is not None})
    if sustain:
        lines.append("- prefill timing: before each N is timed, untimed prefills of N tokens run for %s s (at least one), on"
                     " both sides, so both are timed at the clock the GPU holds under load (its power cap)"
                     % "/".join("%g" % s for s in sustain))
    lines.append("- command: `%s`" % command)
    lines.append("")
    lines.append("## Prefill tokens/s (one sequence; ratio = engine / transformers)")
    lines.append("")
    hdr = "| layout | Hq/Hkv | " + " | ".join("%s engine | %s HF | %s ratio" % (k(n), k(n), k(n)) for n in sizes)
    hdr += " | speed-up over MHA at %s | target 0.85*H/Hq |" % k(big)
    lines.append(hdr)
    lines.append("|" + "---|" * (2 + 3 * len(sizes) + 2))
    summary = {"prefill": {}, "decode": {}, "targets": {}}
    for l in layouts:
        e = eng[l]
        p = by_tokens(e["prefill"])
        base = hf.get(l) or hf.get("MHA")
        hp = by_tokens(base["prefill"]) if base else {}
        cells = ["%s" % l, "%d/%d" % (e["num_query_heads"], e["num_key_value_heads"])]
        for n in sizes:
            cells.append("%.0f" % p[n] if n in p else "-")
            hf_label = "" if l in hf else " (MHA)"
            cells.append(("%.0f%s" % (hp[n], hf_label)) if n in hp else "-")
            cells.append("%.2fx" % (p[n] / hp[n]) if n in p and n in hp else "-")
        speed = p.get(big, 0) / mha[big] if big in mha and mha[big] else None
        target = 0.85 * e["num_attention_heads"] / max(e["num_query_heads"], e["num_key_value_heads"])
        cells.append("%.2fx" % speed if speed else "-")
        cells.append("%.2fx %s" % (target, ("(met)" if speed and speed >= target else "(missed)")) if l != "MHA" else "-")
        lines.append("| " + " | ".join(cells) + " |")
        summary["prefill"][l] = {"engine": p, "hf": hp if l in hf else None, "speedup_over_mha_at_max": speed,
                                 "target": target}
    lines.append("")
    if "MHA" in eng and hf_mha:
        r = [by_tokens(eng["MHA"]["prefill"])[n] / hf_mha[n] for n in sizes if n in hf_mha]
        ok = all(x >= 1.5 for x in r)
        lines.append("MHA engine / transformers: %s (target >= 1.5x: %s)"
                     % (", ".join("%.2fx" % x for x in r), "met" if ok else "missed"))
        summary["targets"]["mha_vs_hf"] = {"ratios": r, "met": ok}
        lines.append("")
    sweep = []
    for fn in sorted(glob.glob(os.path.join(src, "sweep_MHA_chunk*.json"))):
        with open(fn) as f:
            j = json.load(f)
        for r in j["prefill"]:
            sweep.append((j["chunk_tokens"], r["tokens"], r["tokens_per_second"]))
    if sweep:
        lines.append("Prefill chunk size (MHA, engine): " + ", ".join(
            "chunk %d: %.0f tok/s at %s" % (c, t, k(n)) for c, n, t in sorted(sweep)))
        summary["chunk_sweep_mha"] = [{"chunk": c, "tokens": n, "tokens_per_second": t} for c, n, t in sorted(sweep)]
        lines.append("")
    lines.append("## Decode tokens/s (ratio = engine / transformers)")
    lines.append("")
    cols = 5 if graphs_measured else 4
    if graphs_measured:
        lines.append("| layout | " + " | ".join("B=%d engine | B=%d no graphs | B=%d HF | B=%d ratio | B=%d ms/step"
                                               % (b, b, b, b, b) for b in batches) + " |")
    else:
        lines.append("| layout | " + " | ".join("B=%d engine | B=%d HF | B=%d ratio | B=%d ms/step" % (b, b, b, b)
                                               for b in batches) + " |")
    lines.append("|" + "---|" * (1 + cols * len(batches)))
    for l in layouts:
        rows = eng[l]["decode"]
        d = engine_decode(rows)
        off = by_batch(rows, False)
        ms = {r["batch"]: r["ms_per_step"] for r in rows if r.get("cuda_graphs", False) == graphs_measured}
        hd = by_batch(hf[l]["decode"]) if l in hf else {}
        cells = [l]
        for b in batches:
            cells += ["%.0f" % d[b] if b in d else "-"]
            if graphs_measured:
                cells += ["%.0f" % off[b] if b in off else "-"]
            cells += ["%.0f" % hd[b] if b in hd else "-",
                      "%.2fx" % (d[b] / hd[b]) if b in d and b in hd else "-", "%.2f" % ms[b] if b in ms else "-"]
        lines.append("| " + " | ".join(cells) + " |")
        summary["decode"][l] = {"engine": d, "engine_no_graphs": off if graphs_measured else None, "hf": hd or None}
    lines.append("")
    text = "\n".join(lines) + "\n"
    with open(prefix + ".md", "w") as f:
        f.write(text)
    with open(prefix + ".json", "w") as f:
        json.dump({"command": command, "gpu": gpu_name(src), "summary": summary, "engine": eng, "transformers": hf}, f,
                  indent=1)
    print(text)


if __name__ == "__main__":
    main()
