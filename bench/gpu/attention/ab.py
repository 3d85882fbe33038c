#!/usr/bin/env python3
"""Compares two builds' prefill rows from sqa-attn-bench JSON timed in one device call (A B A B).

usage: ab.py A_1.json[,A_2.json...] B_1.json[,B_2.json...]
Prints, per (layout, N, variant, kernel), the mean TFLOP/s of each side over its runs and B/A,
then the range of B/A per N and variant (the figures NOTES.md quotes for A/B experiments)."""
import collections
import json
import sys


def load(paths):
    got = collections.defaultdict(list)
    for path in paths.split(","):
        for r in json.load(open(path))["prefill"]:
            got[(r["layout"], r["n"], r["variant"], r.get("kernel", "wgmma"))].append(r["tflops"])
    return {k: sum(v) / len(v) for k, v in got.items()}


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    a, b = load(argv[0]), load(argv[1])
    keys = sorted(set(a) & set(b), key=lambda k: (k[1], k[2], k[3], k[0]))
    ranges = collections.defaultdict(list)
    for k in keys:
        ratio = b[k] / a[k]
        ranges[(k[1], k[2])].append(ratio)
        print(f"{k[0]:6} {k[1]:7} {k[2]:11} {k[3]:10} A {a[k]:6.1f}  B {b[k]:6.1f}  B/A {ratio:.3f}")
    print()
    for (n, variant), v in sorted(ranges.items()):
        print(f"N={n:7} {variant:11} B/A {100 * (min(v) - 1):+.1f}% to {100 * (max(v) - 1):+.1f}%")
    return 0 if keys else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
