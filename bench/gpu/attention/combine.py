#!/usr/bin/env python3
"""Combines sqa-attn-bench JSON and sdpa.py JSON into one table.

Usage: combine.py --attn attn.json --sdpa sdpa.json --out-md bench/results/gpu_attention.md
                  --out-json bench/results/gpu_attention.json [--decode dec.json] [--note "text"]
Prints the markdown table and writes it (plus the merged raw JSON). Every number comes from the
input files: with --decode, the decode rows come from that run instead of --attn's (--attn may
then be an earlier gpu_attention.json, whose raw_attn holds the prefill run).
"""
import argparse
import datetime
import json

COPY_CEILING = 4.08e12   # bytes/s, device copy read+write, REFERENCE.md
GEMM_CEILING = 727.0     # TFLOP/s, bf16 GEMM, REFERENCE.md


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", required=True)
    ap.add_argument("--sdpa", required=True)
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--note", default="")
    ap.add_argument("--floor-run", default="",
                    help="sqa-attn-bench JSON of a run that timed the read-only floor beside the default decode "
                         "kernel: rendered as its own table (both columns from that one run)")
    ap.add_argument("--decode", default="",
                    help="sqa-attn-bench JSON whose decode rows replace those of --attn")
    args = ap.parse_args()
    attn = json.load(open(args.attn))
    if "raw_attn" in attn:  # an earlier output of this script
        attn = attn["raw_attn"]
    if args.decode:
        attn = dict(attn)
        attn["decode"] = json.load(open(args.decode))["decode"]
    sdpa = json.load(open(args.sdpa))
    ours = {}   # the default (wgmma ping-pong, TMA producer) kernel
    cpa = {}    # the same kernel with its cp.async producer (--kernels cpasync)
    lock = {}   # the wgmma lockstep kernel, when the run timed it (--kernels lockstep)
    prev = {}   # the earlier mma.sync kernel, when the run timed it (--kernels mma)
    ping = {}   # the wgmma ping-pong kernel without the intra-warpgroup overlap (--kernels pingpong)
    for r in attn["prefill"]:
        k = r.get("kernel", "wgmma")
        if k.startswith("wgmma-hg"):
            continue  # CTA-order sweeps, not this table
        {"mma": prev, "lockstep": lock, "pingpong": ping, "cpasync": cpa}.get(k, ours)[(r["layout"], r["n"], r["variant"])] = r
    theirs = {}
    for r in sdpa["rows"]:
        theirs[(r["layout"], r["n"], r["backend"])] = r
    order = []
    for r in attn["prefill"]:
        if r.get("kernel", "wgmma") != "wgmma":
            continue
        key = (r["layout"], r["n"])
        if key not in order:
            order.append(key)
    order.sort(key=lambda k: (k[1], [x for x in ["MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "rSQA"]].index(k[0])
                              if k[0] in ["MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "rSQA"] else 99))

    def sustain_text(a, b):
        sa, sb = a.get("sustain_ms", 0), b.get("sustain_ms", 0)
        if sa > 0 and sa == sb:
            return (f"Every row, ours and SDPA's, is timed after {sa:.0f} ms of sustained load by the same "
                    "kernels, so all are timed at the clock the GPU holds under load (its ~700 W power limit "
                    "lowers the SM clock about a second into a load; short rows timed from idle run at the "
                    "boost clock instead).")
        return (f"Sustained load before timing: ours {sa:.0f} ms, SDPA {sb:.0f} ms (0 = timed from idle, "
                "at whatever clock the GPU then holds).")

    def fmt(r):
        if r is None or "ms" not in r:
            return "n/a", "n/a"
        return f"{r['ms']:.3f}", f"{r['tflops']:.0f}"

    lines = []
    lines.append(f"# Attention kernels on one {attn.get('gpu', '?')} vs PyTorch SDPA")
    lines.append("")
    lines.append(f"Generated {datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC')} by "
                 "bench/gpu/attention/combine.py from sqa-attn-bench and sdpa.py JSON "
                 f"(torch {sdpa.get('torch', '?')}). {args.note}")
    lines.append("")
    lines.append("Causal prefill, one sequence of N tokens, bf16, head_dim 128, H=32 layouts. "
                 "TFLOP/s counts 2*2*Ha*N^2*dh/2 (Ha = max(Hq, Hkv)). Median of repeats after warm-up "
                 "(CUDA events); the kernels of one row are timed round-robin. " + sustain_text(attn, sdpa) +
                 " `ours` = the default wgmma kernel "
                 "(a producer whose one thread issues TMA copies + two consumer warpgroups taking turns, each "
                 "warpgroup's softmax overlapping its own previous P V) over paged KV (block 64, shuffled table: "
                 "what the engine runs); `ours contig` = same kernel, K/V [N, Hkv, dh]; `cp.async` = the same "
                 "kernel with the producer warpgroup copying through cp.async (the previous default); "
                 "`ping-pong`, `lockstep` and `mma.sync` = the earlier wgmma kernels (without the overlap; "
                 "without producer and turns) and the mma.sync kernel on the same paged KV in the same run "
                 "(n/a: not timed in this run). Ratios are SDPA time / our paged time (> 1: ours faster).")
    lines.append("")
    lines.append("| layout | Hq/Hkv | N | ours ms | TF/s | ours contig ms | TF/s | cp.async TF/s | ping-pong TF/s "
                 "| lockstep TF/s | mma.sync TF/s | cuDNN ms | TF/s | flash ms | TF/s | vs cuDNN | vs flash |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows_out = []
    for layout, n in order:
        p = ours.get((layout, n, "paged64"))
        c = ours.get((layout, n, "contiguous"))
        cu = theirs.get((layout, n, "cudnn"))
        fl = theirs.get((layout, n, "flash"))
        base = p or c
        hq, hkv = base["hq"], base["hkv"]
        r_cu = f"{cu['ms'] / base['ms']:.2f}" if cu and "ms" in cu else "n/a"
        r_fl = f"{fl['ms'] / base['ms']:.2f}" if fl and "ms" in fl else "n/a"
        mp = prev.get((layout, n, "paged64"))
        lp = lock.get((layout, n, "paged64"))
        pp = ping.get((layout, n, "paged64"))
        cp = cpa.get((layout, n, "paged64"))
        lines.append(f"| {layout} | {hq}/{hkv} | {n} | {fmt(p)[0]} | {fmt(p)[1]} | {fmt(c)[0]} | {fmt(c)[1]} | "
                     f"{fmt(cp)[1]} | {fmt(pp)[1]} | {fmt(lp)[1]} | {fmt(mp)[1]} | {fmt(cu)[0]} | {fmt(cu)[1]} | {fmt(fl)[0]} | {fmt(fl)[1]} | "
                     f"{r_cu} | {r_fl} |")
        rows_out.append({"layout": layout, "hq": hq, "hkv": hkv, "n": n, "ours_paged": p, "ours_contiguous": c,
                         "cpasync_paged": cp, "pingpong_paged": pp, "lockstep_paged": lp, "mma_sync_paged": mp, "cudnn": cu, "flash": fl})
    # Summary ratios over N >= 32768 (the long-context range), computed from the rows above.
    long_rows = [r for r in rows_out if r["n"] >= 32768 and r["ours_paged"] and "ms" in r["ours_paged"]]
    def ratio_range(key):
        v = [r[key]["ms"] / r["ours_paged"]["ms"] for r in long_rows if r.get(key) and "ms" in r[key]]
        return (min(v), max(v)) if v else None
    tf = [r["ours_paged"]["tflops"] for r in long_rows]
    tfc = [r["ours_contiguous"]["tflops"] for r in long_rows if r["ours_contiguous"]]
    lines.append("")
    if tf:
        lines.append(f"Summary at N >= 32768: ours {min(tf):.0f}-{max(tf):.0f} TFLOP/s paged"
                     + (f", {min(tfc):.0f}-{max(tfc):.0f} contiguous" if tfc else "") + "; "
                     + "; ".join(f"{name} time / ours {lo:.2f}-{hi:.2f}x" for name, rr in
                                 (("flash", ratio_range("flash")), ("cuDNN", ratio_range("cudnn")),
                                  ("cp.async", ratio_range("cpasync_paged")),
                                  ("ping-pong", ratio_range("pingpong_paged")),
                                  ("lockstep", ratio_range("lockstep_paged")),
                                  ("mma.sync", ratio_range("mma_sync_paged"))) if rr for lo, hi in [rr]) + ".")
    lines.append("")
    lines.append(f"Limit: prefill is compute-bound (bytes per run are < 2 GB, under 1 ms at copy speed); "
                 f"ceiling {GEMM_CEILING:.0f} TFLOP/s (bf16 GEMM measured here)"
                 + (f", of which the paged kernel reaches {100 * min(tf) / GEMM_CEILING:.0f}-"
                    f"{100 * max(tf) / GEMM_CEILING:.0f}% at N >= 32768" if tf else "")
                 + ". One warpgroup's softmax runs during the other's GEMMs and its own previous P V; what the "
                 "tensor pipe waits for is the turn hand-over and the softmax's issue slots (exponentials, row "
                 "sums, packing P; the row max is taken only on tiles whose partial row sums exceed 2^8, NOTES.md "
                 "v17-v18), and the GPU runs these kernels at its power cap: the ncu profiles of earlier versions "
                 "and the clock trace are in bench/gpu/attention/NOTES.md (v13b, v14; the clock protocol: v15).")
    lines.append("")
    order_k = ["v10", "v8", "v6", "v5", "v4", "v3"]  # newest first: the first one a run timed is the default
    timed = [k for k in order_k if any(r.get("kernel", "v3") == k for r in attn["decode"])]
    dk = timed[0] if timed else "v4"
    ck = timed[1] if len(timed) > 1 else order_k[min(order_k.index(dk) + 1, len(order_k) - 1)]
    lines.append("## Decode over the paged cache (block 64), bytes of K+V read per second")
    lines.append("")
    lines.append(f"Copy ceiling {COPY_CEILING / 1e12:.2f} TB/s (device copy, read + write). "
                 "Every sequence of the batch has `ctx` tokens; combinations above the benchmark's memory cap "
                 "are skipped. Timing: one CUDA graph of 32 launches, each over its own copy of the cache (K/V "
                 "comes from DRAM, not L2), per-launch median; `1 call` = one launch timed alone with events, "
                 f"host launch cost included. `{dk}` = the default kernel, `{ck}` = the one before it, same "
                 "run (when timed). "
                 "`read-only` (when timed) = a kernel that only reads the same bytes with every SM, in the "
                 "same kind of graph: what reading that much in one launch costs at that size, with no compute.")
    lines.append("")
    dec = {}
    dorder = []
    for r in attn["decode"]:
        if r.get("splits_requested", 0) not in (0, None):
            continue  # forced split counts belong to sweeps, not to this table
        key = (r["layout"], r["ctx"], r["batch"])
        if key not in dec:
            dorder.append(key)
        dec.setdefault(key, {})[r.get("kernel", "v3")] = r
    has_cmp = any(ck in v for v in dec.values())
    head = "| layout | Hq/Hkv | ctx | batch | splits | us | 1 call us | GB/s | % of ceiling |"
    sep = "|---|---|---|---|---|---|---|---|---|"
    if has_cmp:
        head += f" {ck} us | {ck} % of ceiling | {ck} time / {dk} |"
        sep += "---|---|---|"
    # The read-only floor (sqa-attn-bench, calls up to 1 GB): the same bytes read by a kernel that
    # does nothing else; shown only when the run measured it.
    has_floor = any((v.get(dk) or {}).get("read_floor_ms", 0) > 0 for v in dec.values())
    if has_floor:
        head += f" read-only us | read-only % of ceiling | {dk} time / read-only |"
        sep += "---|---|---|"
    lines.append(head)
    lines.append(sep)
    dec_rows = []
    for key in dorder:
        k = dec[key]
        r = k.get(dk)
        if r is None:
            continue
        single = f"{r['ms_single_launch'] * 1e3:.1f}" if "ms_single_launch" in r else "n/a"
        line = (f"| {r['layout']} | {r['hq']}/{r['hkv']} | {r['ctx']} | {r['batch']} | {r['splits']} | "
                f"{r['ms'] * 1e3:.1f} | {single} | {r['bytes_per_s'] / 1e9:.0f} | "
                f"{100 * r['fraction_of_copy_ceiling']:.1f}% |")
        rc = k.get(ck)
        if has_cmp:
            if rc and r is not rc:
                line += (f" {rc['ms'] * 1e3:.1f} | {100 * rc['fraction_of_copy_ceiling']:.1f}% | "
                         f"{rc['ms'] / r['ms']:.2f} |")
            else:
                line += " n/a | n/a | n/a |"
        if has_floor:
            line += floor_cells(r) if r.get("read_floor_ms", 0) > 0 else " n/a | n/a | n/a |"
        lines.append(line)
        dec_rows.append(r)
    lines.append("")
    if dec_rows:
        fr = [r["fraction_of_copy_ceiling"] for r in dec_rows]
        miss = [f"{r['layout']} {r['ctx'] // 1024}k b{r['batch']} ({100 * r['fraction_of_copy_ceiling']:.0f}%)"
                for r in dec_rows if r["fraction_of_copy_ceiling"] < 0.75]
        lines.append(f"Summary: {100 * min(fr):.0f}-{100 * max(fr):.0f}% of the copy ceiling; below the 75% target: "
                     + (", ".join(miss) if miss else "none") + ".")
        lines.append("")
    lines.append("Limit: decode is bandwidth-bound (about Ha/Hkv FLOP per byte of KV). The copy ceiling counts "
                 "a copy's reads plus writes; a read-only stream can exceed it (HBM3e datasheet peak 4.8 TB/s), "
                 "so values above 100% mean the KV stream runs at the memory's read rate. MQA at batch 1 and "
                 "short contexts reads 17-67 MB (4-15 us at the read rate): the launch, the first loads' "
                 "latency and the merge of the splits are then most of the time (v5 and v6 merge inside the "
                 "split kernel and issue their first loads before the kernel before it has finished: NOTES.md "
                 "v20). `sqa-attn-bench --decode-timeline` stamps each CTA's phases: at MQA 128k batch 1 a CTA's "
                 "first tile lands about 5.5 us after it starts, its 512 KB then stream at ~29 GB/s, and the "
                 "epilogue, the wait for the slowest split and the merge take another ~6 us (NOTES.md v21). "
                 "v8 runs the MQA loop on warpgroup MMA with a quarter of v6's instructions per key and the "
                 "same bytes in flight, and its loop phase takes as long as v6's: these calls wait on the "
                 "loads, not on compute (NOTES.md v23). "
                 "v10 merges the MQA splits at batch 1 from 128k tokens in a merge kernel that loads every "
                 "partial at once instead of inside the split kernel: the split CTAs leave when their partial is "
                 "stored, and the next launch's CTAs issue their early loads while that kernel merges (NOTES.md v24). "
                 "Where a run timed it, the last table gives the read-only floor at those sizes; NOTES.md v19 "
                 "to v24 have what was tried against these rows.")
    if args.floor_run:
        lines += floor_table(args.floor_run)
    md = "\n".join(lines) + "\n"
    open(args.out_md, "w").write(md)
    json.dump({"gpu": attn.get("gpu"), "torch": sdpa.get("torch"), "prefill": rows_out, "decode": attn["decode"],
               "raw_attn": attn, "raw_sdpa": sdpa}, open(args.out_json, "w"), indent=1)
    print(md)


def floor_cells(r):
    """Read-only us, its % of the copy ceiling, and the row's time over it (r timed the floor)."""
    f = r["read_floor_ms"]
    return f" {f * 1e3:.1f} | {100 * r['kv_bytes'] / (f * 1e-3) / COPY_CEILING:.1f}% | {r['ms'] / f:.2f} |"


def floor_table(path):
    """The decode rows of one sqa-attn-bench run beside the read-only kernel of the same run."""
    run = json.load(open(path))
    kernels = [r for r in run.get("decode", []) if r.get("splits_requested", 0) in (0, None)]
    default = next((k for k in ("v10", "v8", "v6", "v5", "v4", "v3") if any(r.get("kernel") == k for r in kernels)), None)
    out = ["", "## Decode beside the read-only floor (one run)", ""]
    out.append(f"From `{path}`: the `{default}` rows and the read-only kernel (same bytes, every SM, no compute; "
               "the same graph of 32 launches over cache copies) timed in that one run. `75% allows` = the time "
               "at which a call would reach 75% of the copy ceiling.")
    out.append("")
    out.append("| layout | Hq/Hkv | ctx | batch | splits | us | % of ceiling | read-only us | read-only % of ceiling "
               "| us / read-only | 75% allows us |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in kernels:
        if r.get("kernel") != default or r.get("read_floor_ms", 0) <= 0:
            continue
        allow = r["kv_bytes"] / (0.75 * COPY_CEILING)
        out.append(f"| {r['layout']} | {r['hq']}/{r['hkv']} | {r['ctx']} | {r['batch']} | {r['splits']} | "
                   f"{r['ms'] * 1e3:.1f} | {100 * r['fraction_of_copy_ceiling']:.1f}% |" + floor_cells(r) +
                   f" {allow * 1e6:.2f} |")
    out.append("")
    return out


if __name__ == "__main__":
    main()
