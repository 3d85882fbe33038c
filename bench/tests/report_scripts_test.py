#!/usr/bin/env python3
"""The GPU benchmarks' report scripts, run on small made-up inputs (no GPU needed).

combine.py: the prefill ratios against SDPA, the decode table's default kernel and summary, and
the --floor-run table (ratios and the time that 75% of the copy ceiling allows) are computed
from the inputs. step_kernels_ncu.py: two ncu logs that differ by four decode steps give one
step's kernels, grouped by name, block and grid, with the prompt's prefill subtracted.
analyze.py: the attention rate up to which an SQA layout's speed-up target holds, checked against
the closed form for a made-up engine JSON.
"""
import csv
import json
import os
import pathlib
import subprocess
import sys
import tempfile

SRC = pathlib.Path(os.environ.get("SQA_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
COPY_CEILING = 4.08e12
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def run(args):
    r = subprocess.run([sys.executable] + [str(a) for a in args], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout, r.stderr)
    return r


def table_rows(md, heading):
    """The rows of the first table after `heading`, as lists of cell strings."""
    lines = md.splitlines()
    i = next(k for k, l in enumerate(lines) if l.startswith(heading))
    rows = []
    for l in lines[i:]:
        if l.startswith("|"):
            rows.append([c.strip() for c in l.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # without the header and separator


def decode_row(layout, ctx, batch, kernel, ms, kv_bytes, floor_ms=0.0, splits=4):
    bw = kv_bytes / (ms * 1e-3)
    return {"layout": layout, "hq": 32, "hkv": 1, "ctx": ctx, "batch": batch, "kernel": kernel, "splits": splits,
            "splits_requested": 0, "ms": ms, "ms_single_launch": ms * 1.1, "kv_bytes": kv_bytes, "bytes_per_s": bw,
            "fraction_of_copy_ceiling": bw / COPY_CEILING, "read_floor_ms": floor_ms}


def test_combine(tmp):
    prefill = []
    for variant, ms in (("paged64", 2.0), ("contiguous", 1.9)):
        prefill.append({"layout": "MHA", "hq": 32, "hkv": 32, "n": 32768, "variant": variant, "kernel": "wgmma",
                        "ms": ms, "tflops": 600.0 * 2.0 / ms})
    mb = 16 * 2 ** 20
    attn = {"gpu": "Test GPU", "sustain_ms": 1500, "prefill": prefill,
            "decode": [decode_row("MQA", 32768, 1, "v4", 0.0138, mb),
                       decode_row("MQA", 32768, 1, "v3", 0.0276, mb),
                       decode_row("MQA", 131072, 8, "v4", 0.132, 32 * mb),
                       decode_row("MQA", 131072, 8, "v4", 0.5, 32 * mb) | {"splits_requested": 7}]}
    sdpa = {"torch": "0.0", "sustain_ms": 1500,
            "rows": [{"layout": "MHA", "n": 32768, "backend": "cudnn", "ms": 2.2, "tflops": 545.0},
                     {"layout": "MHA", "n": 32768, "backend": "flash", "ms": 3.6, "tflops": 333.0}]}
    floor = {"decode": [decode_row("MQA", 32768, 1, "v4", 0.0138, mb, floor_ms=0.0051),
                        decode_row("MQA", 131072, 8, "v4", 0.132, 32 * mb, floor_ms=0.117)]}
    paths = {}
    for name, obj in (("attn", attn), ("sdpa", sdpa), ("floor", floor)):
        paths[name] = tmp / f"{name}.json"
        paths[name].write_text(json.dumps(obj))
    md_path = tmp / "out.md"
    r = run([SRC / "bench/gpu/attention/combine.py", "--attn", paths["attn"], "--sdpa", paths["sdpa"],
             "--out-md", md_path, "--out-json", tmp / "out.json", "--floor-run", paths["floor"], "--note", "N."])
    check(r.returncode == 0, "combine.py runs")
    if r.returncode != 0:
        return
    md = md_path.read_text()
    pre = table_rows(md, "| layout | Hq/Hkv | N |")
    check(len(pre) == 1 and pre[0][-2] == "1.10" and pre[0][-1] == "1.80",
          f"prefill ratios are SDPA time / paged time: {pre}")
    dec = table_rows(md, "## Decode over the paged cache")
    check(len(dec) == 2, f"decode table: one row per (layout, ctx, batch), forced splits left out: {dec}")
    check(dec and dec[0][5] == "13.8" and dec[0][-3:] == ["27.6", f"{100 * mb / 0.0276e-3 / COPY_CEILING:.1f}%", "2.00"],
          f"decode row: v4 us, then v3 beside it: {dec[:1]}")
    check("below the 75% target: MQA 32k b1" in md and "MQA 128k b8" not in md.split("Summary:")[1].split("\n")[0],
          "the summary lists the rows under 75% only")
    fl = table_rows(md, "## Decode beside the read-only floor")
    check(len(fl) == 2, f"floor table rows: {fl}")
    if fl:
        check(fl[0][7] == "5.1" and fl[0][9] == f"{0.0138 / 0.0051:.2f}", f"floor ratio: {fl[0]}")
        check(fl[0][10] == f"{mb / (0.75 * COPY_CEILING) * 1e6:.2f}", f"75% allows: {fl[0]}")
    out = json.loads((tmp / "out.json").read_text())
    check(out["gpu"] == "Test GPU" and len(out["prefill"]) == 1, "the JSON beside the table")


def write_ncu_csv(path, kernels):
    """An ncu --csv log: a banner line, the header, then one row per (kernel, metric)."""
    with open(path, "w", newline="") as f:
        f.write("==PROF== Connected to process 1\n")
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream", "Block Size",
                    "Grid Size", "Device", "CC", "Section Name", "Metric Name", "Metric Unit", "Metric Value"])
        for i, (name, grid, ns) in enumerate(kernels):
            w.writerow([i, 1, "b", "h", name, 1, 13, "(256, 1, 1)", grid, 0, "9.0", "Command line profiler metrics",
                        "gpu__time_duration.sum", "ns", f"{ns:,}"])


def test_step_kernels(tmp):
    prompt = [("void sqa::PrefillKernel<128>(Args)", "(8, 1, 1)", 50000)]
    step = [("void sqa::RmsNormKernel<float>(float const*, int)", "(1, 1, 1)", 2000),
            ("void sqa::RmsNormKernel<float>(float const*, int)", "(1, 1, 1)", 2200),
            ("void sqa::SkinnyGemmKernel<1, float>(args)", "(128, 1, 1)", 6000)]
    write_ncu_csv(tmp / "s2.csv", prompt + step * 2)
    write_ncu_csv(tmp / "s6.csv", prompt + step * 6)
    r = run([SRC / "bench/gpu/e2e/step_kernels_ncu.py", tmp / "s2.csv", tmp / "s6.csv", 4])
    check(r.returncode == 0, "step_kernels_ncu.py runs")
    text = r.stdout
    check("per step: 10.2 us" in text and ", 3 kernels" in text, f"per-step total: {text.splitlines()[:1]}")
    rows = table_rows(text, "| us per step |") if "| us per step |" in text else []
    got = [(row[3], row[0], row[1], row[2]) for row in rows]
    want = [("void sqa::SkinnyGemmKernel<1, float>", "6.0", "1.0", "6.00"),
            ("void sqa::RmsNormKernel<float>", "4.2", "2.0", "2.10")]
    check(got == want, f"kernels by time per step, the prompt's prefill subtracted: {got}")


def test_analyze(tmp):
    # Two layouts of a 2-layer model, d = 1024, 8 heads of 128: MHA and Hq = Hkv = 2 (target
    # 0.85 * 8 / 2 = 3.4x), one prefill size each.
    n, d, L, dh, inter = 65536, 1024, 2, 128, 5632

    def layout(hq, hkv, seconds):
        return {"hidden_size": d, "layers": L, "head_dim": dh, "num_query_heads": hq, "num_key_value_heads": hkv,
                "prefill": [{"tokens": n, "seconds": seconds}],
                "decode": [{"batch": 1, "context": 1024, "steps": 64, "ms_per_step": 1.0, "cuda_graphs": True}]}

    eng = {"MHA": layout(8, 8, 0.5), "xSQA": layout(2, 2, 0.2)}
    (tmp / "e2e.json").write_text(json.dumps({"engine": eng}))
    r = run([SRC / "bench/gpu/e2e/analyze.py", tmp / "e2e.json"])
    check(r.returncode == 0, "analyze.py runs")
    rows = table_rows(r.stdout, "| layout | Hq | target |") if "| layout | Hq | target |" in r.stdout else []
    check(len(rows) == 1 and rows[0][0] == "xSQA", f"one SQA-family row: {rows}")
    if len(rows) != 1:
        return
    target = 0.85 * 8 / 2
    check(rows[0][2] == "%.2fx" % target and rows[0][3] == "%.2fx" % (0.5 / 0.2), f"target and measured: {rows[0]}")
    # The closed form: (g_m / G + a_m / R) / (g_x / G + a_x / R) = target, solved for R.
    for col, gemm in ((4, 600e12), (5, 727e12)):
        def flops(hq):
            params = L * (d * hq * dh + 2 * d * hq * dh + hq * dh * d + 3 * d * inter)
            return 2.0 * params * n, L * 4.0 * hq * dh * n * n / 2
        g_m, a_m = flops(8)
        g_x, a_x = flops(2)
        want = (a_m - target * a_x) / (target * g_x / gemm - g_m / gemm)
        check(rows[0][col] == "<= %.0f TFLOP/s" % (want / 1e12), f"break-even rate, GEMMs at {gemm / 1e12:.0f}:"
              f" {rows[0][col]} against {want / 1e12:.0f}")
        # At that rate the ratio is the target.
        ratio = (g_m / gemm + a_m / want) / (g_x / gemm + a_x / want)
        check(abs(ratio - target) < 1e-9, f"ratio at the break-even rate: {ratio}")


def main():
    with tempfile.TemporaryDirectory() as d:
        test_combine(pathlib.Path(d))
        test_step_kernels(pathlib.Path(d))
        test_analyze(pathlib.Path(d))
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("report scripts: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
