#!/usr/bin/env python3
"""Per-step kernel time of graphed decode steps, from two ncu runs (profile_decode.sh).

ncu --graph-profiling node times every kernel inside the step graphs one by one (serialized, so
kernels that overlap in a real replay are summed here). Two runs that differ only in the number
of decode steps (S1 < S2) share the prompt's prefill and the warm-up steps, so the difference of
their per-kernel sums, divided by S2 - S1, is what one decode step launches and how long each
kernel takes on its own.

usage: step_kernels_ncu.py RUN_S1.csv RUN_S2.csv STEPS_DIFFERENCE
"""
import collections
import csv
import re
import sys


def load(path):
    """Sum gpu__time_duration (ns) and count per (kernel, block, grid)."""
    agg = collections.defaultdict(lambda: [0, 0.0])
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) < 15 or not row[0].isdigit() or row[12] != "gpu__time_duration.sum":
                continue
            name = re.sub(r"\(.*", "", row[4])[:60]
            key = (name, row[7], row[8])
            agg[key][0] += 1
            agg[key][1] += float(row[14].replace(",", ""))
    return agg


def main(argv):
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    a, b, steps = load(argv[1]), load(argv[2]), int(argv[3])
    rows = []
    for key in set(a) | set(b):
        n = b.get(key, [0, 0])[0] - a.get(key, [0, 0])[0]
        t = b.get(key, [0, 0])[1] - a.get(key, [0, 0])[1]
        if n:
            rows.append((t / steps / 1e3, n / steps, t / n / 1e3, key))
    rows.sort(reverse=True)
    print("per step: %.1f us of kernel time (serialized), %.0f kernels" % (sum(r[0] for r in rows),
                                                                         sum(r[1] for r in rows)))
    print("| us per step | launches | us each | kernel | block | grid |")
    print("|---|---|---|---|---|---|")
    for us, n, each, (name, block, grid) in rows:
        print("| %.1f | %.1f | %.2f | %s | %s | %s |" % (us, n, each, name.strip(), block, grid))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
