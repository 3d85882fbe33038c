#!/usr/bin/env python3
"""sqa-group-bench on the CPU (ctest group_bench_cpu_smoke): a scaling run on 2 ranks in both modes
with per-rank fields, and the longest-prompt search under a KV byte cap on 1 and 2 ranks, whose
boundary is known; report.py renders all three tables from the lines."""
import json
import os
import pathlib
import subprocess
import sys
import tempfile

bin_dir = pathlib.Path(os.environ["SQA_BIN_DIR"])
here = pathlib.Path(__file__).resolve().parent
with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    model = tmp / "model"
    subprocess.run([bin_dir / "sqa-mkmodel", "--out", model, "--preset", "tiny", "--layout", "SQA", "--seed", "7"],
                   check=True, stdout=subprocess.DEVNULL)
    bench = [bin_dir / "sqa-group-bench", "--model", model, "--device", "cpu", "--threads", "1"]
    runs = tmp / "runs"
    runs.mkdir()

    def run(args, name):
        p = subprocess.run(bench + args, check=True, capture_output=True, text=True)
        (runs / name).write_text(p.stdout)
        return [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]

    lines = run(["--world", "2", "--tokens", "256", "--warmup", "32", "--chunk", "64"], "scaling.jsonl")
    assert [l["mode"] for l in lines] == ["single", "heads", "sequence"], lines
    for l in lines:
        p = l["gpus"]
        assert len(l["rank_attention_seconds"]) == p and all(a > 0 for a in l["rank_attention_seconds"]), l
        assert all(0 <= e <= c for e, c in zip(l["rank_exposed_comm_seconds"], l["rank_collective_seconds"])), l
        assert all(a <= s for a, s in zip(l["rank_attention_seconds"], l["rank_step_seconds"])), l
        assert l["attention_balance"] >= 1.0, l
        if p > 1:
            assert all(e > 0 for e in l["rank_exposed_comm_seconds"]), l
            assert l["last_logits_rel_diff"] < 1e-4, l
    # tiny SQA on the CPU: 2 layers x 2 KV heads x head_dim 8 x (K, V) x 4 bytes = 256 bytes a token;
    # a cap of 256 KiB per rank holds 1024 tokens.
    cap = ["--max-kv-bytes", str(256 << 10), "--step", "128", "--max-tokens", "4096"]
    one = run(["--longest", "--world", "1"] + cap, "longest1.jsonl")
    two = run(["--longest", "--world", "2", "--modes", "sequence"] + cap, "longest2.jsonl")
    assert one[0]["longest_tokens"] == 1024 and one[0]["first_failing_tokens"] == 1152, one
    assert two[0]["longest_tokens"] == 2048 and two[0]["first_failing_tokens"] == 2176, two
    assert one[0]["failure_code"] == "RESOURCE_EXHAUSTED", one
    out = tmp / "out"
    out.mkdir()
    subprocess.run([sys.executable, here / "report.py", "--runs", runs, "--out", out, "--quiet"], check=True)
    md = (out / "gpu_group.md").read_text()
    for want in ("## Balance and exposed communication, per rank", "## Longest prompt that fits",
                 "| 1 | single | 128 | 1024 | 1152 | KV cap |", "| 2 | sequence | 128 | 2048 | 2176 | KV cap |"):
        assert want in md, (want, md)
print("group bench CPU smoke OK")
