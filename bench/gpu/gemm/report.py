#!/usr/bin/env python3
"""Renders sqa-gemm-bench JSON as bench/results/gpu_gemm.md (and copies the JSON beside it).

usage: report.py GEMM_JSON OUT_PREFIX "COMMAND"
"""
import datetime
import json
import sys


def main(argv):
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    doc = json.load(open(argv[1]))
    ceil = doc["ceiling_tbs"] * 1e12
    out = ["# Decode-sized GEMMs: cuBLASLt against the skinny kernel", "",
           "- date: %s" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "- GPU: %s" % doc["gpu"],
           "- command: `%s`" % argv[3],
           "- x [rows, in] times W [out, in]^T, bf16 (the LM head's f32 logits where marked); per-launch median of a"
           " CUDA graph of %d launches, each on its own copy of W (W comes from DRAM). GB/s counts W's bytes;"
           " %% of the %.2f TB/s copy ceiling. The skinny launches are programmatic dependents of the launch before"
           " them, as in a decode step; cuBLASLt's are not. `max rel` = max |skinny - cuBLASLt| / max |cuBLASLt| on"
           " one launch." % (doc["launches"], doc["ceiling_tbs"]), "",
           "| rows | in | out | out type | cuBLASLt us | GB/s | % of ceiling | skinny us | GB/s | % of ceiling |"
           " cuBLASLt time / skinny | max rel |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        out.append("| %d | %d | %d | %s | %.2f | %.0f | %.1f%% | %.2f | %.0f | %.1f%% | %.2f | %.1e |" % (
            r["rows"], r["in"], r["out"], r["out_dtype"], r["cublaslt_us"], r["cublaslt_gbs"],
            100 * r["cublaslt_gbs"] * 1e9 / ceil, r["skinny_us"], r["skinny_gbs"], 100 * r["skinny_gbs"] * 1e9 / ceil,
            r["cublaslt_us"] / r["skinny_us"], r["max_rel_diff"]))
    if doc.get("fused"):
        out += ["", "Fused forms of a layer (d = 2048): cuBLASLt = one launch per weight (and the SwiGLU kernel);"
                " skinny = one launch for all of them.", "",
                "| op | rows | cuBLASLt us | GB/s | skinny us | GB/s | cuBLASLt time / skinny |",
                "|---|---|---|---|---|---|---|"]
        for r in doc["fused"]:
            out.append("| %s | %d | %.2f | %.0f | %.2f | %.0f | %.2f |" % (
                r["op"], r["rows"], r["cublaslt_us"], r["cublaslt_gbs"], r["skinny_us"], r["skinny_gbs"],
                r["cublaslt_us"] / r["skinny_us"]))
    def span(rows):
        rat = [r["cublaslt_us"] / r["skinny_us"] for r in rows]
        return "%.2f-%.2fx" % (min(rat), max(rat)) if rat else "n/a"
    narrow = [r for r in doc["rows"] if r["rows"] <= 8]
    wide = [r for r in doc["rows"] if r["rows"] > 8]
    out += ["", "Summary: skinny / cuBLASLt speed %s over the single GEMMs above at 1-8 rows (the skinny kernel's"
            " narrow form, which the engine uses)." % span(narrow)]
    if wide:
        wq = [r for r in doc.get("fused", []) if r["rows"] > 8]
        out += ["At 9-32 rows the skinny kernel runs its wide form: %s on one weight, so the engine keeps one weight"
                " (and gate/up/SwiGLU) on cuBLASLt there; %s for q, k, v in one launch, which the engine's"
                " LinearMany uses." % (span(wide), span(wq))]
    open(argv[2] + ".md", "w").write("\n".join(out) + "\n")
    json.dump(doc, open(argv[2] + ".json", "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
