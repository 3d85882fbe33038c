#!/usr/bin/python3
"""sqa-run as a user runs it: output files and shapes, batch naming, stop tokens, sampling
reproducibility, chunk-size independence, decode logits == prefill logits of the same tokens,
and exit code 2 with a message (never a crash) on bad input.

Environment: SQA_BIN_DIR = directory with sqa-mkmodel and sqa-run (ctest sets it).
"""

import json
import os
import shutil
import subprocess
import tempfile
import unittest

import numpy as np

BIN = os.environ.get("SQA_BIN_DIR", "")
RUN = os.path.join(BIN, "sqa-run")
MK = os.path.join(BIN, "sqa-mkmodel")
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run(args, check=True):
    p = subprocess.run([RUN] + args, capture_output=True, text=True, env=ENV, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError("sqa-run %s failed (%d):\n%s" % (" ".join(args), p.returncode, p.stderr))
    return p


def load_json(path):
    with open(path) as f:
        return json.load(f)


def rel(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))


class SqaRunTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="sqa-run-test-")
        cls.model = os.path.join(cls.tmp, "model")
        subprocess.run([MK, "--out", cls.model, "--preset", "tiny", "--layout", "SQA", "--seed", "4"],
                       check=True, capture_output=True, env=ENV, timeout=120)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def test_outputs_and_decode_equals_prefill(self):
        prompt = "3,1,4,1,5,9,2,6,5,3,5,8,9,7,9"
        run(["--model", self.model, "--prompt-tokens", prompt, "--generate", "6", "--logits-out", self.path("p.npy"),
             "--decode-logits-out", self.path("d.npy"), "--tokens-out", self.path("t.json"), "--block-size", "4",
             "--chunk-tokens", "4"])
        p, d = np.load(self.path("p.npy")), np.load(self.path("d.npy"))
        self.assertEqual(p.dtype, np.float32)
        self.assertEqual(p.shape, (15, 256))
        self.assertEqual(d.shape, (5, 256))
        t = load_json(self.path("t.json"))
        seq = t["sequences"][0]
        self.assertEqual(seq["prompt_tokens"], 15)
        self.assertEqual(seq["finish_reason"], "length")
        gen = seq["generated"]
        self.assertEqual(len(gen), 6)
        # Greedy: token 0 from the last prompt row, token t+1 from decode row t.
        self.assertEqual(gen[0], int(np.argmax(p[-1])))
        for i in range(5):
            self.assertEqual(gen[i + 1], int(np.argmax(d[i])))
        # Prefilling prompt + generated[:-1] in one go gives the same rows as the decode steps.
        full = prompt + "," + ",".join(str(x) for x in gen[:-1])
        run(["--model", self.model, "--prompt-tokens", full, "--logits-out", self.path("f.npy")])
        f = np.load(self.path("f.npy"))
        self.assertLess(rel(d, f[15:]), 1e-5)
        self.assertLess(rel(p, f[:15]), 1e-5)

    def test_batch_files_and_chunk_independence(self):
        args = ["--model", self.model, "--synthetic-prompt", "70", "--prompt-tokens", "7", "--synthetic-prompt", "33",
                "--generate", "4", "--logits-out", self.path("b.npy"), "--decode-logits-out", self.path("bd.npy"),
                "--tokens-out", self.path("b.json")]
        run(args + ["--chunk-tokens", "2048"])
        ref = [np.load(self.path("b.%d.npy" % i)) for i in range(3)]
        ref_d = [np.load(self.path("bd.%d.npy" % i)) for i in range(3)]
        self.assertEqual([r.shape[0] for r in ref], [70, 1, 33])
        self.assertFalse(os.path.exists(self.path("b.npy")))
        toks = load_json(self.path("b.json"))["sequences"]
        self.assertEqual(len(toks), 3)
        run(args + ["--chunk-tokens", "9", "--block-size", "5"])
        for i in range(3):
            self.assertLess(rel(np.load(self.path("b.%d.npy" % i)), ref[i]), 1e-5)
            self.assertLess(rel(np.load(self.path("bd.%d.npy" % i)), ref_d[i]), 1e-5)
        self.assertEqual(load_json(self.path("b.json"))["sequences"], toks)
        # A sequence alone gives the same logits as inside the batch.
        run(["--model", self.model, "--prompt-tokens", "7", "--generate", "4", "--decode-logits-out",
             self.path("one.npy")])
        self.assertLess(rel(np.load(self.path("one.npy")), ref_d[1]), 1e-5)

    def test_sampling_reproducible_and_stop_tokens(self):
        base = ["--model", self.model, "--prompt-tokens", "1,2,3", "--generate", "12", "--temperature", "1.0",
                "--top-k", "40", "--top-p", "0.95"]

        def gen(extra):
            run(base + extra + ["--tokens-out", self.path("s.json")])
            return load_json(self.path("s.json"))["sequences"][0]

        a, b, c = gen(["--seed", "11"]), gen(["--seed", "11"]), gen(["--seed", "12"])
        self.assertEqual(a["generated"], b["generated"])
        self.assertNotEqual(a["generated"], c["generated"])
        stop = a["generated"][4]
        first = a["generated"].index(stop)
        s = gen(["--seed", "11", "--stop-tokens", "%d,100000" % stop])
        self.assertEqual(s["finish_reason"], "stop")
        self.assertEqual(s["generated"], a["generated"][:first + 1])

    def test_bad_input_exits_2_with_message(self):
        cases = [
            [],
            ["--model", self.model],
            ["--model", os.path.join(self.tmp, "missing"), "--prompt-tokens", "1"],
            ["--model", self.model, "--prompt-tokens", "1,256"],
            ["--model", self.model, "--prompt-tokens", "1,-3"],
            ["--model", self.model, "--prompt-tokens", ""],
            ["--model", self.model, "--prompt-file", os.path.join(self.tmp, "missing.txt")],
            ["--model", self.model, "--prompt-tokens", "1", "--generate", "x"],
            ["--model", self.model, "--prompt-tokens", "1", "--temperature", "-1"],
            ["--model", self.model, "--prompt-tokens", "1", "--top-p", "1.5"],
            ["--model", self.model, "--prompt-tokens", "1", "--device", "tpu"],
            ["--model", self.model, "--prompt-tokens", "1", "--block-size", "0"],
            ["--model", self.model, "--prompt-tokens", "1", "--bogus", "1"],
            ["--model", self.model, "--synthetic-prompt", "4096", "--generate", "1"],
        ]
        for c in cases:
            p = run(c, check=False)
            self.assertEqual(p.returncode, 2, "%s -> rc %d, stderr %s" % (c, p.returncode, p.stderr))
            self.assertIn("sqa-run: ", p.stderr)

    def test_prompt_file(self):
        with open(self.path("prompt.txt"), "w") as f:
            f.write("5, 6\n7\t8 9\n")
        run(["--model", self.model, "--prompt-file", self.path("prompt.txt"), "--logits-out", self.path("pf.npy")])
        run(["--model", self.model, "--prompt-tokens", "5,6,7,8,9", "--logits-out", self.path("pt.npy")])
        np.testing.assert_array_equal(np.load(self.path("pf.npy")), np.load(self.path("pt.npy")))


if __name__ == "__main__":
    unittest.main(verbosity=2)
