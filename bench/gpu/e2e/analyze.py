#!/usr/bin/env python3
"""What limits the end-to-end numbers: reads gpu_e2e.json (report.py) and writes a markdown table of
FLOPs and bytes against the measured ceilings of REFERENCE.md (bf16 GEMM ~600-727 TFLOP/s,
device copy 4.08 TB/s).

usage: analyze.py bench/results/gpu_e2e.json > bench/results/gpu_e2e_analysis.md

Prefill: FLOPs of the projections + MLP (2 * params * N; the LM head runs on one row) and of causal
attention (4 * max(Hq, Hkv) * dh * N^2 / 2 per layer). Assuming the GEMMs run at GEMM_TFLOPS, the
rest of the measured time is charged to attention, which gives its effective rate. The Amdahl
bound of an SQA layout's speed-up over MHA follows from the same split (attention at MHA's
effective rate, GEMMs at GEMM_TFLOPS). The last prefill table asks the converse: the issue's target
for an SQA-family layout (speed-up over MHA >= 0.85 * H / Hq) holds only while both layouts'
attention runs at or below some rate R; R follows from the same FLOP split, for GEMMs at
GEMM_TFLOPS and at the GEMM ceiling GEMM_CEILING_TFLOPS.
Decode: the floor is reading every weight (bf16) plus the batch's KV once per step at 4.08 TB/s.
"""
import json
import sys

GEMM_TFLOPS = 600.0
GEMM_CEILING_TFLOPS = 727.0  # REFERENCE.md: bf16 GEMM measured on the H200
TARGET_FRACTION = 0.85       # the target: speed-up over MHA >= 0.85 * H / Hq
COPY_TBS = 4.08


def rate_for_target(tg_m, a_m, tg_x, a_x, target):
    """The attention rate (FLOP/s) at or below which (tg_m + a_m / R) / (tg_x + a_x / R) >= target.

    Returns (kind, R): kind "upto" (the target holds for R <= R), "any" (for every R) or "none"."""
    num = a_m - target * a_x    # > 0: attention alone is more than target x cheaper
    den = target * tg_x - tg_m  # > 0: the GEMMs alone are less than target x cheaper
    if num <= 0:
        return ("none", 0.0) if den >= 0 else ("from", num / den)
    if den <= 0:
        return ("any", 0.0)
    return ("upto", num / den)


def breakeven_table(eng, split, n):
    if "MHA" not in eng or ("MHA", n) not in split:
        return ""
    h = eng["MHA"]["num_query_heads"]
    rows = ["The target at %d tokens: speed-up over MHA >= %.2f x H / Hq (H = %d). With MHA and the layout both"
            " running attention at R TFLOP/s, the target holds only for R at or below the rate in the last two"
            " columns (GEMMs at %.0f and at the %.0f TFLOP/s ceiling); compare the attention rates of the first"
            " table and of gpu_attention.md (ours and PyTorch SDPA's backends)." % (n, TARGET_FRACTION, h,
                                                                                   GEMM_TFLOPS, GEMM_CEILING_TFLOPS),
            "", "| layout | Hq | target | measured | target holds for attention at (GEMMs %.0f) |"
            " (GEMMs %.0f) |" % (GEMM_TFLOPS, GEMM_CEILING_TFLOPS), "|---|---|---|---|---|---|"]
    _, a_m = split[("MHA", n)]
    mha_t = eng["MHA"]["prefill"][-1]["seconds"]
    for lay, c in eng.items():
        hq = c["num_query_heads"]
        if lay == "MHA" or hq >= h or (lay, n) not in split:
            continue
        target = TARGET_FRACTION * h / hq
        meas = mha_t / [r for r in c["prefill"] if r["tokens"] == n][0]["seconds"]
        _, a_x = split[(lay, n)]
        cells = []
        for gemm in (GEMM_TFLOPS, GEMM_CEILING_TFLOPS):
            tg_m = split[("MHA", n)][0] * GEMM_TFLOPS / gemm
            tg_x = split[(lay, n)][0] * GEMM_TFLOPS / gemm
            kind, r = rate_for_target(tg_m, a_m, tg_x, a_x, target)
            cells.append({"none": "never", "any": "any rate", "upto": "<= %.0f TFLOP/s" % (r / 1e12),
                          "from": ">= %.0f TFLOP/s" % (r / 1e12)}[kind])
        rows.append("| %s | %d | %.2fx | %.2fx | %s | %s |" % (lay, hq, target, meas, cells[0], cells[1]))
    rows.append("")
    return "\n".join(rows)


def main():
    j = json.load(open(sys.argv[1]))
    eng = j["engine"]
    out = ["# What limits the end-to-end numbers (computed from %s)" % sys.argv[1], "",
           "GEMMs assumed at %.0f TFLOP/s (cuBLASLt bf16 on the H200); the remaining time is charged to"
           " attention. Decode floor: weights + KV read once per step at %.2f TB/s." % (GEMM_TFLOPS, COPY_TBS), "",
           "| layout | tokens | seconds | GEMM TFLOP | attention TFLOP | overall TFLOP/s | attention share of time |"
           " attention effective TFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    attn_rate = {}
    split = {}
    for lay, c in eng.items():
        d, L, I, dh, V = c["hidden_size"], c["layers"], None, c["head_dim"], None
        hq, hkv = c["num_query_heads"], c["num_key_value_heads"]
        ha = max(hq, hkv)
        # MLP width and vocabulary are not in the engine JSON; the 1b preset's values.
        I, V = 5632, 32000
        params = L * (d * hq * dh + 2 * d * hkv * dh + ha * dh * d + 3 * d * I)
        for r in c["prefill"]:
            n, s = r["tokens"], r["seconds"]
            g = 2.0 * params * n
            a = L * 4.0 * ha * dh * n * n / 2
            t_g = g / (GEMM_TFLOPS * 1e12)
            t_a = max(s - t_g, 1e-9)
            rate = a / t_a / 1e12
            attn_rate[(lay, n)] = rate
            split[(lay, n)] = (t_g, a)
            out.append("| %s | %d | %.3f | %.1f | %.1f | %.0f | %.0f%% | %.0f |"
                       % (lay, n, s, g / 1e12, a / 1e12, (g + a) / s / 1e12, 100 * t_a / s, rate))
        c["_params"] = params
    out.append("")
    if any(k[0] == "MHA" for k in attn_rate):
        n = max(k[1] for k in attn_rate if k[0] == "MHA")
        mha_t = eng["MHA"]["prefill"][-1]["seconds"]
        out.append("Amdahl bound of the speed-up over MHA at %d tokens (attention at MHA's effective %.0f TFLOP/s,"
                   " GEMMs at %.0f):" % (n, attn_rate[("MHA", n)], GEMM_TFLOPS))
        out.append("")
        out.append("| layout | bound | measured |")
        out.append("|---|---|---|")
        for lay in eng:
            if (lay, n) not in split:
                continue
            t_g, a = split[(lay, n)]
            bound = mha_t / (t_g + a / (attn_rate[("MHA", n)] * 1e12))
            meas = mha_t / [r for r in eng[lay]["prefill"] if r["tokens"] == n][0]["seconds"]
            out.append("| %s | %.2fx | %.2fx |" % (lay, bound, meas))
        out.append("")
        out.append(breakeven_table(eng, split, n))
    out.append("| layout | decode batch | graphs | ms/step | floor ms (weights + KV at %.2f TB/s) | measured / floor |"
               % COPY_TBS)
    out.append("|---|---|---|---|---|---|")
    for lay, c in eng.items():
        hkv, dh, L, d = c["num_key_value_heads"], c["head_dim"], c["layers"], c["hidden_size"]
        wbytes = 2.0 * (c["_params"] + 32000 * d)
        for r in c["decode"]:
            kv = 2.0 * L * 2 * hkv * dh * (r["context"] + r["steps"]) * r["batch"]
            floor = (wbytes + kv) / (COPY_TBS * 1e12) * 1e3
            out.append("| %s | %d | %s | %.2f | %.3f | %.1fx |" % (lay, r["batch"], "on" if r.get("cuda_graphs") else "off",
                                                                  r["ms_per_step"], floor, r["ms_per_step"] / floor))
    out.append("")
    graphs = any(r.get("cuda_graphs") for c in eng.values() for r in c["decode"])
    skinny = any(c.get("skinny_gemm") for c in eng.values())
    # RoPE and the K/V cache write as one kernel (runs that record fuse_rope_kv): one kernel less.
    fused_rope = 1 if any(c.get("fuse_rope_kv") for c in eng.values()) else 0
    # Runs that record skinny_max_rows (0 = 32) take q/k/v at batch 9-32 in one launch of the skinny
    # kernel's wide form: two kernels less than three cuBLASLt launches.
    wide_qkv = any("skinny_max_rows" in c and c["skinny_max_rows"] in (0, None) or
                   (c.get("skinny_max_rows") or 0) > 8 for c in eng.values())
    per_layer = ("batch <= 8: %d kernels a layer, the projections on the skinny GEMM kernel with q/k/v and"
                 " gate/up/SwiGLU fused%s, each kernel a programmatic dependent of the one before; batch 32: %s,"
                 " %d a layer" % (10 - fused_rope, ", RoPE and the cache write fused" if fused_rope else "",
                                  "q/k/v in one launch of the skinny kernel's wide form, the other GEMMs on cuBLASLt"
                                  if wide_qkv else "cuBLASLt", 14 - fused_rope - (2 if wide_qkv else 0))
                 if skinny else "%d kernels a layer" % (16 - fused_rope))
    if graphs:
        out.append("Decode rows with graphs=on replay one CUDA graph per step (%s, plus the final norm, LM head"
                   " and sampler); graphs=off launches the same kernels one by one." % per_layer)
    else:
        out.append("Decode runs ~%d kernels per step (16 per layer plus the LM head) with host work between"
                   " them and no CUDA graph, so it sits well above the bandwidth floor." % (16 * 16 + 4))
    print("\n".join(out))


if __name__ == "__main__":
    main()
