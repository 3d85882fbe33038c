#!/usr/bin/env python3
"""Copies generated benchmark tables into README.md and writes bench/RESULTS.md.

Every block between `<!-- include:PATH -->` and `<!-- end:include -->` is replaced by the text of
PATH (relative to the repository root), so README quotes only figures that a benchmark wrote.
bench/RESULTS.md is the GPU results in one file (each table with its date, GPU and command), made
from the same generated files; the raw JSON lies beside them in bench/results/.
"""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
readme = root / "README.md"
text = readme.read_text()
pattern = re.compile(r"(<!-- include:(?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end:include -->)", re.S)


def fill(m):
    path = root / m.group("path")
    if not path.exists():
        sys.exit(f"update_readme: {path} does not exist; run the benchmark that writes it")
    body = path.read_text()
    # Demote the file's headings so they nest under README's section.
    body = re.sub(r"^(#+) ", lambda h: "#" * min(len(h.group(1)) + 2, 6) + " ", body, flags=re.M)
    return m.group(1) + body.rstrip() + "\n" + m.group(4)


new = pattern.sub(fill, text)
if new != text:
    readme.write_text(new)
    print("README.md updated")

GPU_RESULTS = ["bench/results/gpu_attention.md", "bench/results/gpu_e2e.md", "bench/results/gpu_e2e_analysis.md",
               "bench/results/gpu_gemm.md", "bench/results/gpu_group.md"]
parts = ["# GPU results", "",
         "Made by `scripts/update_readme.py` from the generated files below (do not edit by hand). Raw",
         "JSON: " + ", ".join(f"`{p[:-3]}.json`" for p in GPU_RESULTS if (root / (p[:-3] + ".json")).exists()) +
         "; the GPU test log of the same binaries: `bench/results/gpu_tests.log`.", ""]
for rel in GPU_RESULTS:
    body = (root / rel).read_text()
    body = re.sub(r"^(#+) ", lambda h: "#" + h.group(1) + " ", body, flags=re.M)
    parts += [f"<!-- from {rel} -->", body.rstrip(), ""]
results = root / "bench" / "RESULTS.md"
new_results = "\n".join(parts) + "\n"
if not results.exists() or results.read_text() != new_results:
    results.write_text(new_results)
    print("bench/RESULTS.md updated")
