#!/usr/bin/env python3
"""sqa-run --device cuda against the independent NumPy reference (tests/reference/sqa_reference.py).

For every layout: a random bf16 model of the "medium" preset (head_dim 64, which the CUDA attention
kernels take; the reference suite's "tiny" preset has head_dim 8) with 3 layers and a 2048-token
vocabulary, a batch of two prompts of different lengths prefilled in chunks, then greedy decode.
Every prefill logit row and every decode logit row is compared with the reference on
prompt + generated[:-1]: max|engine - ref| / max|ref| <= TOL (bf16 activations: 2e-2).

Run on a GPU machine: SQA_BIN_DIR=dir-with-sqa-mkmodel-and-sqa-run reference_cuda.py
Exit code 0 when every comparison passes, 1 otherwise; 77 (skip) without a GPU device.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", "..", "..", ".."))
REF = os.path.join(ROOT, "tests", "reference", "sqa_reference.py")
TOL = float(os.environ.get("SQA_REFERENCE_TOL", "2e-2"))
LAYOUTS = os.environ.get("SQA_LAYOUTS", "MHA,GQA,MQA,SQA,sSQA,xSQA,xSMQA,rSQA").split(",")
DEVICE = os.environ.get("SQA_DEVICE", "cuda")  # cpu checks this script itself


def call(argv):
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("rc %d: %s\n%s\n%s" % (p.returncode, " ".join(argv), p.stdout[-2000:], p.stderr[-2000:]))
    return p


def rel_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main():
    bin_dir = os.environ.get("SQA_BIN_DIR", "")
    mk = os.path.join(bin_dir, "sqa-mkmodel")
    run = os.path.join(bin_dir, "sqa-run")
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    if DEVICE == "cuda":
        # Skip (77) when this machine has no usable GPU: sqa-run says so on a tiny model.
        with tempfile.TemporaryDirectory() as d:
            call([mk, "--out", d, "--preset", "tiny"])
            p = subprocess.run([run, "--model", d, "--device", "cuda", "--synthetic-prompt", "2"],
                               capture_output=True, text=True)
            if p.returncode != 0 and "no CUDA device" in p.stderr:
                print("reference_cuda: skipped (no CUDA device)")
                return 77
    failures = 0
    worst = {}
    with tempfile.TemporaryDirectory() as d:
        for i, layout in enumerate(LAYOUTS):
            mdir = os.path.join(d, layout)
            seed = int(rng.integers(0, 1 << 30))
            call([mk, "--out", mdir, "--preset", "medium", "--layout", layout, "--layers", "3", "--vocab", "2048",
                  "--dtype", "bf16", "--seed", str(seed)])
            vocab = json.load(open(os.path.join(mdir, "config.json")))["vocab_size"]
            lens = [int(rng.integers(60, 200)), int(rng.integers(5, 60))]
            prompts = [[int(t) for t in rng.integers(0, vocab, n)] for n in lens]
            gen = 6
            argv = [run, "--model", mdir, "--device", DEVICE, "--generate", str(gen), "--chunk-tokens", "48",
                    "--block-size", "16", "--logits-out", os.path.join(d, "p.npy"), "--decode-logits-out",
                    os.path.join(d, "g.npy"), "--tokens-out", os.path.join(d, "t.json")]
            for p in prompts:
                argv += ["--prompt-tokens", ",".join(map(str, p))]
            try:
                call(argv)
            except RuntimeError as e:
                print("FAIL %s: sqa-run failed: %s" % (layout, e))
                failures += 1
                continue
            seqs = json.load(open(os.path.join(d, "t.json")))["sequences"]
            for s, p in enumerate(prompts):
                pre = np.load(os.path.join(d, "p.%d.npy" % s))
                dec = np.load(os.path.join(d, "g.%d.npy" % s))
                generated = seqs[s]["generated"]
                full = p + generated[:-1]
                call([sys.executable, REF, "--model", mdir, "--prompt-tokens", ",".join(map(str, full)),
                      "--logits-out", os.path.join(d, "r.npy")])
                ref = np.load(os.path.join(d, "r.npy"))
                e_pre = rel_err(pre, ref[: len(p)])
                e_dec = rel_err(dec, ref[len(p):])
                worst[layout] = max(worst.get(layout, 0.0), e_pre, e_dec)
                ok = e_pre <= TOL and e_dec <= TOL
                failures += 0 if ok else 1
                print("%s %s seq %d (prompt %d, generated %d): prefill rel err %.2e, decode rel err %.2e"
                      % ("ok  " if ok else "FAIL", layout, s, len(p), len(generated), e_pre, e_dec), flush=True)
    print("worst relative error per layout (tolerance %.0e): %s" % (TOL, json.dumps(worst)))
    print("reference_cuda: %s" % ("PASS" if failures == 0 else "%d FAILURES" % failures))
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
