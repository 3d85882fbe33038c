#!/usr/bin/env python3
"""PyTorch SDPA (cuDNN and flash backends) on the shapes sqa-attn-bench times: causal prefill,
one sequence of N tokens, H=32 layouts of REFERENCE.md, head_dim 128, bf16.

GQA-style layouts (Hq > Hkv) use enable_gqa=True; if a backend refuses it, K/V are expanded to Hq
heads (noted as "expanded" in the JSON). rSQA (Hq < Hkv) tiles the queries to Hkv heads, as the
reference code does. Timing: CUDA events around each call, after --sustain-ms (default 1500) of
the same calls and a warm-up, median of the repeats (the same protocol and counts as
sqa-attn-bench). Usage: sdpa.py --json out.json [--n 8192,32768] [--layouts ..] [--sustain-ms MS]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

LAYOUTS = [("MHA", 32, 32), ("GQA", 32, 8), ("MQA", 32, 1), ("SQA", 16, 8), ("sSQA", 16, 16),
           ("xSQA", 8, 8), ("xSMQA", 8, 1), ("rSQA", 8, 16)]
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def median_ms(fn, warm, reps, sustain_ms=0.0):
    # --sustain-ms: run for this long first (wall clock), to time at the sustained-load clock
    t0 = time.perf_counter()
    while (time.perf_counter() - t0) * 1e3 < sustain_ms:
        fn()
        torch.cuda.synchronize()
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--n", default="8192,32768,131072,200000")
    ap.add_argument("--layouts", default="")
    # the same sustained load before timing as sqa-attn-bench's prefill rows (power-capped clock)
    ap.add_argument("--sustain-ms", type=float, default=1500.0)
    args = ap.parse_args()
    ns = [int(x) for x in args.n.split(",") if x]
    want = set(args.layouts.split(",")) if args.layouts else None
    dh = 128
    rows = []
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}", flush=True)
    for n in ns:
        for name, hq, hkv in LAYOUTS:
            if want and name not in want:
                continue
            ha = max(hq, hkv)
            q = torch.randn(1, hq, n, dh, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(1, hkv, n, dh, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(1, hkv, n, dh, device="cuda", dtype=torch.bfloat16)
            if hq < hkv:  # rSQA: head j uses query j mod Hq
                q = q.repeat(1, hkv // hq, 1, 1)
            flops = 4.0 * ha * n * n * dh / 2
            warm, reps = (3, 10) if n <= 32768 else (1, 3)
            for bname, backend in BACKENDS.items():
                rec = {"layout": name, "hq": hq, "hkv": hkv, "n": n, "backend": bname}
                gqa = q.shape[1] != k.shape[1]
                modes = [("gqa", q, k, v)] if gqa else [("native", q, k, v)]
                if gqa:
                    rep = q.shape[1] // k.shape[1]
                    modes.append(("expanded", q, None, None))
                for mode, qq, kk, vv in modes:
                    try:
                        if mode == "expanded":
                            kk = k.repeat_interleave(rep, dim=1)
                            vv = v.repeat_interleave(rep, dim=1)
                        with sdpa_kernel([backend]):
                            fn = lambda: F.scaled_dot_product_attention(qq, kk, vv, is_causal=True,
                                                                        enable_gqa=(mode == "gqa"))
                            ms = median_ms(fn, warm, reps, args.sustain_ms)
                        rec.update({"mode": mode, "ms": ms, "tflops": flops / (ms * 1e-3) / 1e12})
                        break
                    except Exception as e:  # backend refused this shape/mode: try the next mode
                        rec.update({"mode": mode, "error": str(e).splitlines()[0][:200]})
                    finally:
                        if mode == "expanded":
                            kk = vv = None
                            torch.cuda.empty_cache()
                rows.append(rec)
                print(json.dumps(rec), flush=True)
            del q, k, v
            torch.cuda.empty_cache()
    with open(args.json, "w") as f:
        json.dump({"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "sustain_ms": args.sustain_ms,
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
