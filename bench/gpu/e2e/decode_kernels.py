#!/usr/bin/env python3
"""Per-step kernel time of decode steps from an `nsys stats -r cuda_gpu_trace -f csv` file.

A decode step of sqa-e2e-bench ends with the device-to-host copy of the sampled tokens, so the
trace is cut after each such copy and the last --steps pieces are the timed steps. For each step:
the span from its first GPU operation to the copy's end, the time kernels ran (their durations
summed), and the rest (gaps between kernels: launch and dependency latency). Kernels are grouped
by name (template arguments and parameters dropped) and ranked by time per step.

usage: decode_kernels.py TRACE.csv [--steps N]
"""
import argparse
import collections
import csv
import re
import sys


def column(header, *names):
    for i, h in enumerate(header):
        if any(h.strip().startswith(n) for n in names):
            return i
    sys.exit(f"decode_kernels: no column {names} in {header}")


def short(name):
    name = name.replace("(anonymous namespace)", "anon")
    name = re.sub(r"\(.*", "", name)            # parameters
    while True:                                  # template arguments, innermost first
        n2 = re.sub(r"<[^<>]*>", "", name)
        if n2 == name:
            break
        name = n2
    name = name.replace("void ", "").strip()
    return name.split("::")[-1] or name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--steps", type=int, default=32)
    args = ap.parse_args()
    rows = list(csv.reader(open(args.trace)))
    if not rows:
        sys.exit("decode_kernels: empty trace")
    header, data = rows[0], rows[1:]
    i_start, i_dur, i_name = column(header, "Start"), column(header, "Duration"), column(header, "Name")
    ops = []
    for r in data:
        if len(r) <= max(i_start, i_dur, i_name):
            continue
        try:
            ops.append((float(r[i_start]), float(r[i_dur]), r[i_name]))
        except ValueError:
            continue
    ops.sort()
    steps, cur = [], []
    for op in ops:
        cur.append(op)
        if "memcpy" in op[2].lower() and ("DtoH" in op[2] or "Device-to-Host" in op[2]):
            steps.append(cur)
            cur = []
    steps = steps[-args.steps:]
    if not steps:
        sys.exit("decode_kernels: no device-to-host copies in the trace (no decode steps found)")
    n = len(steps)
    span = busy = kernels = 0.0
    per = collections.defaultdict(lambda: [0.0, 0])
    for st in steps:
        ks = [op for op in st if "memcpy" not in op[2].lower() and "memset" not in op[2].lower()]
        span += st[-1][0] + st[-1][1] - st[0][0]
        busy += sum(op[1] for op in ks)
        kernels += len(ks)
        for op in ks:
            p = per[short(op[2])]
            p[0] += op[1]
            p[1] += 1
    print(f"# Decode step kernels ({args.trace}, last {n} steps)")
    print()
    print(f"Per step: span {span / n / 1e3:.1f} us (first GPU operation to the sampled tokens' copy), "
          f"kernels {kernels / n:.0f}, kernel time {busy / n / 1e3:.1f} us, "
          f"gaps {(span - busy) / n / 1e3:.1f} us ({100 * (span - busy) / span:.0f}% of the span).")
    print()
    print("| kernel | per step | us per step | share of kernel time | us each |")
    print("|---|---|---|---|---|")
    for name, (t, c) in sorted(per.items(), key=lambda kv: -kv[1][0]):
        print(f"| {name} | {c / n:.0f} | {t / n / 1e3:.1f} | {100 * t / busy:.1f}% | {t / c / 1e3:.2f} |")


if __name__ == "__main__":
    main()
