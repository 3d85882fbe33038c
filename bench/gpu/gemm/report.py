#!/usr/bin/env python3
"""Renders sqa-gemm-bench JSON as bench/results/gpu_gemm.md (and copies the JSON beside it).

usage: report.py GEMM_JSON OUT_PREFIX "COMMAND"
"""
import datetime
import json
import sys


def cell(v, fmt):
    return "n/a" if v is None else fmt % v


def main(argv):
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    doc = json.load(open(argv[1]))
    ceil = doc["ceiling_tbs"] * 1e12
    pct = lambda gbs: None if gbs is None else 100 * gbs * 1e9 / ceil
    ratio = lambda a, b: None if a is None or b is None else a / b
    out = ["# Decode-sized GEMMs: cuBLASLt against the skinny kernel", "",
           "- date: %s" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "- GPU: %s" % doc["gpu"],
           "- command: `%s`" % argv[3],
           "- x [rows, in] times W [out, in]^T, bf16 (the LM head's f32 logits where marked); per-launch median of a"
           " CUDA graph of %d launches, each on its own copy of W (W comes from DRAM). GB/s counts W's bytes;"
           " %% of the %.2f TB/s copy ceiling. `skinny` = the skinny kernel's narrow form (1-8 rows) or wide form"
           " (9-32 rows); `stream` = its stream form (9-64 rows); `engine` = what the engine runs for one weight there"
           " (narrow form up to 8 rows, stream form where it is the preferred choice, else cuBLASLt). The skinny"
           " launches are programmatic dependents of the launch before them, as in a decode step; cuBLASLt's are not."
           " `max rel` = max |form - cuBLASLt| / max |cuBLASLt| on one launch; n/a = the form does not take the"
           " shape." % (doc["launches"], doc["ceiling_tbs"]), "",
           "| rows | in | out | out type | cuBLASLt us | % of ceiling | skinny us | % of ceiling | max rel |"
           " stream us | % of ceiling | max rel | cuBLASLt time / stream | engine |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        eng = "narrow" if r["rows"] <= 8 else ("stream" if r.get("stream_preferred") else "cuBLASLt")
        out.append("| %d | %d | %d | %s | %.2f | %.1f%% | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["rows"], r["in"], r["out"], r["out_dtype"], r["cublaslt_us"], pct(r["cublaslt_gbs"]),
            cell(r.get("skinny_us"), "%.2f"), cell(pct(r.get("skinny_gbs")), "%.1f%%"),
            cell(r.get("max_rel_diff"), "%.1e"), cell(r.get("stream_us"), "%.2f"),
            cell(pct(r.get("stream_gbs")), "%.1f%%"), cell(r.get("stream_max_rel_diff"), "%.1e"),
            cell(ratio(r["cublaslt_us"], r.get("stream_us")), "%.2f"), eng))
    if doc.get("fused"):
        out += ["", "Fused forms of a layer (d = 2048): cuBLASLt = one launch per weight (and the SwiGLU kernel);"
                " skinny = one launch for all of them (narrow form; q/k/v also in the wide form up to 32 rows);"
                " stream = one stream-form launch for all of them (then the SwiGLU kernel). `engine` = what the"
                " engine runs.", "",
                "| op | rows | cuBLASLt us | GB/s | skinny us | GB/s | stream us | GB/s | engine |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in doc["fused"]:
            glu = "SwiGLU" in r["op"]
            if r["rows"] <= 8:
                eng = "skinny"
            elif r.get("stream_preferred"):
                eng = "stream"
            elif not glu and r["rows"] <= 32:
                eng = "skinny"
            else:
                eng = "cuBLASLt"
            out.append("| %s | %d | %.2f | %.0f | %s | %s | %s | %s | %s |" % (
                r["op"], r["rows"], r["cublaslt_us"], r["cublaslt_gbs"], cell(r.get("skinny_us"), "%.2f"),
                cell(r.get("skinny_gbs"), "%.0f"), cell(r.get("stream_us"), "%.2f"), cell(r.get("stream_gbs"), "%.0f"),
                eng))

    def span(rows, key):
        rat = [r["cublaslt_us"] / r[key] for r in rows if r.get(key)]
        return "%.2f-%.2fx" % (min(rat), max(rat)) if rat else "n/a"
    narrow = [r for r in doc["rows"] if r["rows"] <= 8]
    pref = [r for r in doc["rows"] if r["rows"] > 8 and r.get("stream_preferred")]
    other = [r for r in doc["rows"] if r["rows"] > 8 and not r.get("stream_preferred")]
    glu = [r for r in doc.get("fused", []) if "SwiGLU" in r["op"] and r.get("stream_preferred")]
    out += ["", "Summary: skinny / cuBLASLt speed %s over the single GEMMs above at 1-8 rows (the skinny kernel's"
            " narrow form, which the engine uses)." % span(narrow, "skinny_us"),
            "Above 8 rows the stream form runs %s of cuBLASLt's speed where the engine takes it (single weights) and"
            " %s on gate, up and SwiGLU; %s on the other single weights, which stay on cuBLASLt (q, k, v in one"
            " launch take the wide form up to 32 rows)." % (span(pref, "stream_us"), span(glu, "stream_us"),
                                                             span(other, "stream_us"))]
    open(argv[2] + ".md", "w").write("\n".join(out) + "\n")
    json.dump(doc, open(argv[2] + ".json", "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
