#!/usr/bin/env python3
"""Copies generated benchmark tables into README.md.

Every block between `<!-- include:PATH -->` and `<!-- end:include -->` is replaced by the text of
PATH (relative to the repository root), so README quotes only figures that a benchmark wrote.
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
