#!/usr/bin/python3
"""End-to-end check of the engine (sqa-run) against the independent NumPy reference.

For every attention layout a model is made with sqa-mkmodel, run through sqa-run (chunked
prefill, paged KV cache, greedy decode, batches of mixed lengths), and every prefill logit row and
every decode-step logit row is compared with sqa_reference.py on prompt + generated[:-1]:
    max|engine - reference| / max|reference| <= 1e-4
and each greedy token must be the reference's argmax (up to exact near-ties).

Environment: SQA_BIN_DIR = directory holding sqa-mkmodel and sqa-run (ctest sets it).
Run one group: `test_reference.py LayoutTests` (or VariantTests, SelfCheckTests, ReferenceTests).
Set SQA_REFERENCE_VERBOSE=1 to print every comparison; SQA_REFERENCE_DEVICE / SQA_REFERENCE_TOL to
run the engine on another device with another tolerance.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sqa_reference as ref  # noqa: E402

# The CPU engine computes in fp32: 1e-4 is its bound. SQA_REFERENCE_DEVICE=cuda runs sqa-run with
# --device cuda instead (bf16 activations), where SQA_REFERENCE_TOL must be loosened accordingly.
REL_TOL = float(os.environ.get("SQA_REFERENCE_TOL", "1e-4"))
DEVICE = os.environ.get("SQA_REFERENCE_DEVICE", "")
LAYOUTS = ["MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "rSQA"]
VERBOSE = os.environ.get("SQA_REFERENCE_VERBOSE") == "1"

# Largest relative error seen per (group label), printed at the end of the run for the report.
MAX_ERRORS = {}


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError("shape mismatch: engine %s vs reference %s" % (a.shape, b.shape))
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def note_error(label, err):
    MAX_ERRORS[label] = max(MAX_ERRORS.get(label, 0.0), err)


def make_prompt(rng, length, vocab):
    return [int(t) for t in rng.integers(0, vocab, size=length)]


class Tools:
    """Runs the two binaries under test. Errors come back as AssertionError with their output."""

    def __init__(self):
        bin_dir = os.environ.get("SQA_BIN_DIR", "")
        self.mkmodel = os.path.join(bin_dir, "sqa-mkmodel")
        self.run_bin = os.path.join(bin_dir, "sqa-run")
        self.env = dict(os.environ)
        self.env.setdefault("OMP_NUM_THREADS", "2")

    def available(self):
        missing = [p for p in (self.mkmodel, self.run_bin) if not os.access(p, os.X_OK)]
        return missing

    def _call(self, argv):
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=300)
        if proc.returncode != 0:
            raise AssertionError("command failed (rc %d): %s\nstdout:\n%s\nstderr:\n%s"
                                 % (proc.returncode, " ".join(argv), proc.stdout[-3000:], proc.stderr[-3000:]))
        return proc

    def make_model(self, out, layout, seed, preset="tiny", extra=()):
        self._call([self.mkmodel, "--out", out, "--preset", preset, "--layout", layout,
                    "--seed", str(seed)] + list(extra))
        return out

    def run(self, model, prompts, generate, block, chunk, workdir, extra=()):
        """Runs sqa-run over a batch of prompts; returns [(prefill [P,V], decode [N-1,V], tokens [N])]."""
        p_out = os.path.join(workdir, "p.npy")
        d_out = os.path.join(workdir, "d.npy")
        t_out = os.path.join(workdir, "t.json")
        for f in (p_out, d_out, t_out):
            if os.path.exists(f):
                os.remove(f)
        argv = [self.run_bin, "--model", model]
        for p in prompts:
            argv += ["--prompt-tokens", ",".join(str(t) for t in p)]
        argv += ["--generate", str(generate), "--logits-out", p_out, "--decode-logits-out", d_out,
                 "--tokens-out", t_out, "--block-size", str(block), "--chunk-tokens", str(chunk)]
        if DEVICE:
            argv += ["--device", DEVICE]
        argv += list(extra)
        self._call(argv)
        with open(t_out) as f:
            tokens = parse_tokens_json(json.load(f), len(prompts))
        results = []
        for i in range(len(prompts)):
            pre = np.load(batch_path(p_out, i, len(prompts)))
            dec = np.load(batch_path(d_out, i, len(prompts))) if generate > 1 else None
            results.append((pre, dec, tokens[i]))
        return results


def batch_path(path, i, batch):
    """sqa-run writes X.npy for one sequence and X.<i>.npy per sequence for a batch."""
    if batch == 1:
        return path
    stem, ext = os.path.splitext(path)
    return "%s.%d%s" % (stem, i, ext)


def parse_tokens_json(obj, batch):
    """Generated token ids per sequence from --tokens-out.

    Accepted shapes: [ids] (one sequence), [[ids], ...], {"tokens": ...}, {"sequences": [{"tokens": ids}]}.
    """
    if isinstance(obj, dict):
        if "sequences" in obj:
            obj = [s["tokens"] if isinstance(s, dict) else s for s in obj["sequences"]]
        elif "tokens" in obj:
            obj = obj["tokens"]
        else:
            raise AssertionError("--tokens-out JSON has neither 'tokens' nor 'sequences': %r" % list(obj)[:5])
    if obj and all(isinstance(t, int) for t in obj):
        obj = [obj]
    if len(obj) != batch:
        raise AssertionError("--tokens-out has %d sequences, expected %d" % (len(obj), batch))
    return [[int(t) for t in seq] for seq in obj]


class EngineCase(unittest.TestCase):
    """Shared machinery: a temp dir, the tools, and the comparison against the reference."""

    @classmethod
    def setUpClass(cls):
        cls.tools = Tools()
        missing = cls.tools.available()
        if missing:
            raise AssertionError("binaries under test not found: %s (set SQA_BIN_DIR to the build's bin dir)"
                                 % ", ".join(missing))
        cls.tmp = tempfile.mkdtemp(prefix="sqa-reference-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def new_dir(self, name):
        d = os.path.join(self.tmp, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    def compare(self, model, prompt, result, generate, label, rsqa="tile"):
        """Checks one sequence's engine output against the reference; returns the max rel error."""
        pre, dec, toks = result
        vocab = model.cfg.vocab
        P = len(prompt)
        self.assertEqual(len(toks), generate, "%s: engine generated %d tokens, asked for %d" % (label, len(toks), generate))
        full = prompt + toks[:-1]
        want = model.logits(full, rsqa=rsqa)
        self.assertEqual(pre.shape, (P, vocab), "%s: prefill logits shape" % label)
        e_pre = rel_err(pre, want[:P])
        errs = [e_pre]
        if generate > 1:
            self.assertEqual(dec.shape, (generate - 1, vocab), "%s: decode logits shape" % label)
            e_dec = rel_err(dec, want[P:])
            errs.append(e_dec)
        else:
            e_dec = float("nan")
        if VERBOSE:
            print("  %-40s P=%-4d N=%-3d prefill %.2e decode %.2e" % (label, P, generate, e_pre, e_dec),
                  file=sys.stderr)
        self.assertLessEqual(e_pre, REL_TOL, "%s: prefill logits rel err %.3e > %.0e" % (label, e_pre, REL_TOL))
        if generate > 1:
            self.assertLessEqual(e_dec, REL_TOL, "%s: decode logits rel err %.3e > %.0e" % (label, e_dec, REL_TOL))
        # Greedy tokens: token t is the argmax of the reference logits at position P - 1 + t. A
        # different choice is accepted only at an exact near-tie (within the tolerance).
        for t, tok in enumerate(toks):
            row = want[P - 1 + t]
            best = int(row.argmax())
            if tok != best:
                gap = (row[best] - row[tok]) / np.max(np.abs(row))
                self.assertLessEqual(gap, REL_TOL, "%s: greedy token %d is %d, reference argmax %d (gap %.2e)"
                                     % (label, t, tok, best, gap))
        return max(errs)


# ------------------------------------------------------------------------------------------------

class LayoutTests(EngineCase):
    """Every layout: odd prompt lengths vs block/chunk sizes, and a batch of mixed lengths."""

    def test_layouts(self):
        for i, layout in enumerate(LAYOUTS):
            with self.subTest(layout=layout):
                d = self.new_dir(layout)
                mdir = self.tools.make_model(os.path.join(d, "model"), layout, seed=100 + i)
                model = ref.Model(mdir)
                self.check_layout_config(layout, model.cfg)
                rng = np.random.default_rng(i)
                worst = 0.0
                # One sequence, P=77 with block 16 and chunk 32 (neither divides 77).
                p1 = make_prompt(rng, 77, model.cfg.vocab)
                r = self.tools.run(mdir, [p1], 8, block=16, chunk=32, workdir=d)
                worst = max(worst, self.compare(model, p1, r[0], 8, "%s P=77 b16 c32" % layout))
                # A batch of mixed lengths: 130 (block 64, chunk 50), 1, 45.
                batch = [make_prompt(rng, n, model.cfg.vocab) for n in (130, 1, 45)]
                rs = self.tools.run(mdir, batch, 6, block=64, chunk=50, workdir=d)
                for j, (p, r1) in enumerate(zip(batch, rs)):
                    worst = max(worst, self.compare(model, p, r1, 6, "%s batch[%d] P=%d b64 c50" % (layout, j, len(p))))
                note_error(layout, worst)

    def check_layout_config(self, layout, c):
        """The layouts of REFERENCE.md, as ratios of the baseline H (tiny: H=8)."""
        H = c.heads
        expected = {"MHA": (H, H), "GQA": (H, H // 4), "MQA": (H, 1), "SQA": (H // 2, H // 4),
                    "sSQA": (H // 2, H // 2), "xSQA": (H // 4, H // 4), "xSMQA": (H // 4, 1)}
        got = (c.q_heads, c.kv_heads)
        if layout == "rSQA":
            self.assertLess(c.q_heads, c.kv_heads, "rSQA must have Hq < Hkv, got %s" % (got,))
        else:
            self.assertEqual(got, expected[layout], "%s: (Hq, Hkv)" % layout)


class VariantTests(EngineCase):
    """Weight dtypes, sharding, rope scaling, tied embeddings, a longer run on the small preset."""

    def run_case(self, label, layout, seed, mk_extra, lengths, generate, block, chunk, preset="tiny",
                 check=None):
        d = self.new_dir(label)
        mdir = self.tools.make_model(os.path.join(d, "model"), layout, seed=seed, preset=preset, extra=mk_extra)
        model = ref.Model(mdir)
        if check:
            check(mdir, model)
        rng = np.random.default_rng(seed)
        prompts = [make_prompt(rng, n, model.cfg.vocab) for n in lengths]
        rs = self.tools.run(mdir, prompts, generate, block=block, chunk=chunk, workdir=d)
        worst = 0.0
        for j, (p, r) in enumerate(zip(prompts, rs)):
            worst = max(worst, self.compare(model, p, r, generate, "%s[%d] P=%d" % (label, j, len(p))))
        note_error(label, worst)
        return worst

    def test_dtypes(self):
        def dtype_is(want):
            def check(mdir, model):
                self.assertEqual(set(model.dtypes.values()), {want}, "weights should be stored as %s" % want)
            return check
        for layout, dtype, st in (("SQA", "bf16", "BF16"), ("GQA", "bf16", "BF16"),
                                  ("rSQA", "f16", "F16"), ("xSMQA", "f16", "F16")):
            with self.subTest(layout=layout, dtype=dtype):
                self.run_case("%s-%s" % (layout, dtype), layout, 7, ["--dtype", dtype], [77, 20], 5,
                              block=16, chunk=32, check=dtype_is(st))

    def test_sharded(self):
        def sharded(mdir, model):
            index = os.path.join(mdir, "model.safetensors.index.json")
            self.assertTrue(os.path.exists(index), "--shards 3 should write an index")
            with open(index) as f:
                self.assertEqual(len(set(json.load(f)["weight_map"].values())), 3)
        self.run_case("SQA-shards3", "SQA", 11, ["--shards", "3"], [77], 5, block=16, chunk=32, check=sharded)

    def test_rope_scaling(self):
        def scaled(mdir, model):
            self.assertEqual(model.cfg.rope_factor, 2.0)
        self.run_case("GQA-rope2", "GQA", 13, ["--rope-scaling-factor", "2"], [130], 5, block=64, chunk=50,
                      check=scaled)

    def test_tied(self):
        def tied(mdir, model):
            self.assertTrue(model.cfg.tie)
        self.run_case("sSQA-tied", "sSQA", 17, ["--tie"], [77, 9], 5, block=16, chunk=32, check=tied)

    def test_odd_geometry(self):
        # Blocks of 5 tokens, chunks of 3: every chunk and many decode steps cross block edges.
        self.run_case("SQA-b5c3", "SQA", 37, [], [23, 11], 12, block=5, chunk=3)

    def test_small_preset_long(self):
        # About 300 tokens on the larger preset, prompt not a multiple of block or chunk.
        self.run_case("SQA-small", "SQA", 19, [], [291], 10, block=32, chunk=100, preset="small")


class SelfCheckTests(EngineCase):
    """The comparison CAN fail: small, targeted changes push the error far past the tolerance."""

    def test_perturbed_weight_is_detected(self):
        d = self.new_dir("perturb")
        mdir = self.tools.make_model(os.path.join(d, "model"), "SQA", seed=23)
        rng = np.random.default_rng(23)
        prompt = make_prompt(rng, 40, ref.Model(mdir).cfg.vocab)
        r = self.tools.run(mdir, [prompt], 4, block=16, chunk=32, workdir=d)[0]
        good = ref.Model(mdir)
        self.assertLessEqual(self.compare(good, prompt, r, 4, "perturb baseline"), REL_TOL)
        # Change one element of layer 1's k_proj in a copy of the file, on disk.
        bad_dir = os.path.join(d, "model-perturbed")
        shutil.copytree(mdir, bad_dir)
        name = "model.layers.1.self_attn.k_proj.weight"
        w = good.t[name]
        perturb_tensor_element(bad_dir, name, (0, 0), w[0, 0] + 0.5 * np.max(np.abs(w)))
        bad = ref.Model(bad_dir)
        self.assertNotEqual(bad.t[name][0, 0], w[0, 0])
        full = prompt + r[2][:-1]
        err = rel_err(np.concatenate([r[0], r[1]]), bad.logits(full))
        if VERBOSE:
            print("  perturbed weight: rel err %.3e" % err, file=sys.stderr)
        self.assertGreater(err, 10 * REL_TOL, "one changed weight went unnoticed (rel err %.3e)" % err)
        # And the engine, fed the perturbed file, must follow it.
        r_bad = self.tools.run(bad_dir, [prompt], 4, block=16, chunk=32, workdir=d)[0]
        self.compare(bad, prompt, r_bad, 4, "perturbed model")

    def test_rsqa_convention_is_distinguished(self):
        # Tiling (head h uses query h % Hq) vs repeating (query h // (Hkv/Hq)) must differ by far
        # more than the tolerance, so the layout test really pins the rSQA head mapping down.
        d = self.new_dir("rsqa-conv")
        mdir = self.tools.make_model(os.path.join(d, "model"), "rSQA", seed=29)
        model = ref.Model(mdir)
        rng = np.random.default_rng(29)
        prompt = make_prompt(rng, 30, model.cfg.vocab)
        r = self.tools.run(mdir, [prompt], 3, block=16, chunk=32, workdir=d)[0]
        self.compare(model, prompt, r, 3, "rSQA tile")
        full = prompt + r[2][:-1]
        err = rel_err(np.concatenate([r[0], r[1]]), model.logits(full, rsqa="repeat"))
        if VERBOSE:
            print("  rSQA with the repeat convention: rel err %.3e" % err, file=sys.stderr)
        self.assertGreater(err, 10 * REL_TOL)


    def test_rope_scaling_is_distinguished(self):
        # Ignoring the linear rope factor must show up, so VariantTests.test_rope_scaling means something.
        d = self.new_dir("rope-conv")
        mdir = self.tools.make_model(os.path.join(d, "model"), "GQA", seed=31, extra=["--rope-scaling-factor", "2"])
        model = ref.Model(mdir)
        rng = np.random.default_rng(31)
        prompt = make_prompt(rng, 60, model.cfg.vocab)
        r = self.tools.run(mdir, [prompt], 3, block=16, chunk=32, workdir=d)[0]
        self.compare(model, prompt, r, 3, "rope factor 2")
        model.cfg.rope_factor = 1.0
        err = rel_err(np.concatenate([r[0], r[1]]), model.logits(prompt + r[2][:-1]))
        if VERBOSE:
            print("  rope factor ignored: rel err %.3e" % err, file=sys.stderr)
        self.assertGreater(err, 10 * REL_TOL)


def perturb_tensor_element(model_dir, name, index, value):
    """Rewrites one element of tensor `name` in place in whichever safetensors file holds it."""
    idx_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx_path):
        with open(idx_path) as f:
            fname = json.load(f)["weight_map"][name]
    else:
        fname = "model.safetensors"
    path = os.path.join(model_dir, fname)
    with open(path, "r+b") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        info = json.loads(f.read(hlen))[name]
        if info["dtype"] != "F32":
            raise AssertionError("perturb_tensor_element handles F32 only, got %s" % info["dtype"])
        flat = int(np.ravel_multi_index(index, info["shape"]))
        f.seek(8 + hlen + info["data_offsets"][0] + 4 * flat)
        f.write(struct.pack("<f", float(value)))


# ------------------------------------------------------------------------------------------------
# Checks of the reference itself (no binaries needed): its reader and math on hand-built files.

def write_safetensors(path, tensors):
    """tensors: {name: (dtype str, ndarray)} with the array already in that dtype's bit pattern."""
    header, blobs, off = {}, [], 0
    for name, (dt, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hdr = json.dumps(header).encode()
    hdr += b" " * (-len(hdr) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr + b"".join(blobs))


def random_model(cfg, seed):
    rng = np.random.default_rng(seed)
    d, dh, I, V = cfg["hidden_size"], cfg["head_dim"], cfg["intermediate_size"], cfg["vocab_size"]
    hq, hkv = cfg["num_query_heads"], cfg["num_key_value_heads"]
    t = {"model.embed_tokens.weight": rng.normal(0, 1, (V, d)), "model.norm.weight": 1 + 0.1 * rng.normal(size=d),
         "lm_head.weight": rng.normal(0, d ** -0.5, (V, d))}
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        t[p + "input_layernorm.weight"] = 1 + 0.1 * rng.normal(size=d)
        t[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.normal(size=d)
        t[p + "self_attn.q_proj.weight"] = rng.normal(0, d ** -0.5, (hq * dh, d))
        t[p + "self_attn.k_proj.weight"] = rng.normal(0, d ** -0.5, (hkv * dh, d))
        t[p + "self_attn.v_proj.weight"] = rng.normal(0, d ** -0.5, (hkv * dh, d))
        t[p + "self_attn.o_proj.weight"] = rng.normal(0, d ** -0.5, (d, max(hq, hkv) * dh))
        t[p + "mlp.gate_proj.weight"] = rng.normal(0, d ** -0.5, (I, d))
        t[p + "mlp.up_proj.weight"] = rng.normal(0, d ** -0.5, (I, d))
        t[p + "mlp.down_proj.weight"] = rng.normal(0, I ** -0.5, (d, I))
    return t


def save_model(d, cfg, tensors, dtype="F32"):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    conv = {}
    for k, v in tensors.items():
        if dtype == "F32":
            conv[k] = ("F32", v.astype("<f4"))
        elif dtype == "F64":
            conv[k] = ("F64", v.astype("<f8"))
        elif dtype == "F16":
            conv[k] = ("F16", v.astype("<f2"))
        elif dtype == "BF16":  # truncate f32 to its high half
            conv[k] = ("BF16", (v.astype("<f4").view("<u4") >> 16).astype("<u2"))
    write_safetensors(os.path.join(d, "model.safetensors"), conv)


BASE_CFG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_query_heads": 4,
            "num_key_value_heads": 4, "head_dim": 8, "intermediate_size": 48, "vocab_size": 50,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0}


class ReferenceTests(unittest.TestCase):
    """Properties the reference must have, checked on hand-made models (no engine involved)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="sqa-reftest-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_dtype_decoding(self):
        vals = np.array([1.0, -2.5, 3.140625, 1e-3, -65504.0, 0.0], dtype=np.float32)
        bf = (vals.view("<u4") >> 16).astype("<u2")
        got = ref._decode(bf.tobytes(), "BF16", [6])
        want = (bf.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        np.testing.assert_array_equal(got, want)
        self.assertEqual(got[1], -2.5)  # exactly representable in bf16
        np.testing.assert_array_equal(ref._decode(vals.astype("<f2").tobytes(), "F16", [6]),
                                      vals.astype(np.float16).astype(np.float64))

    def test_sharded_equals_single(self):
        t = random_model(BASE_CFG, 1)
        save_model(os.path.join(self.tmp, "one"), BASE_CFG, t)
        sd = os.path.join(self.tmp, "sharded")
        os.makedirs(sd)
        with open(os.path.join(sd, "config.json"), "w") as f:
            json.dump(BASE_CFG, f)
        names = sorted(t)
        weight_map = {}
        for s in range(3):
            part = {n: ("F32", t[n].astype("<f4")) for n in names[s::3]}
            fname = "model-%05d-of-00003.safetensors" % (s + 1)
            write_safetensors(os.path.join(sd, fname), part)
            weight_map.update({n: fname for n in part})
        with open(os.path.join(sd, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
        toks = [3, 1, 4, 1, 5, 9, 2, 6]
        np.testing.assert_array_equal(ref.logits(os.path.join(self.tmp, "one"), toks), ref.logits(sd, toks))

    def test_causal(self):
        save_model(self.tmp, BASE_CFG, random_model(BASE_CFG, 2))
        m = ref.Model(self.tmp)
        a = m.logits([1, 2, 3, 4, 5, 6])
        b = m.logits([1, 2, 3, 4, 7, 8, 9])
        np.testing.assert_allclose(a[:4], b[:4], rtol=0, atol=1e-12)
        self.assertGreater(np.max(np.abs(a[4] - b[4])), 1e-3)

    def test_rope_relative(self):
        # Rotated q.k depends only on the position difference; scaling 2 at positions 2p equals 1 at p.
        rng = np.random.default_rng(3)
        q, k = rng.normal(size=(1, 1, 8)), rng.normal(size=(1, 1, 8))

        def dot(pq, pk, factor=1.0):
            cq, sq = ref._rope_tables(np.array([pq]), 8, 10000.0, factor)
            ck, sk = ref._rope_tables(np.array([pk]), 8, 10000.0, factor)
            return float(np.sum(ref._apply_rope(q, cq, sq) * ref._apply_rope(k, ck, sk)))
        self.assertAlmostEqual(dot(7, 3), dot(104, 100), places=10)
        self.assertAlmostEqual(dot(14, 6, factor=2.0), dot(7, 3), places=10)
        self.assertNotAlmostEqual(dot(7, 3), dot(7, 4), places=3)
        # Position 0 is the identity; rotation preserves the norm.
        c0, s0 = ref._rope_tables(np.array([0]), 8, 10000.0, 1.0)
        np.testing.assert_allclose(ref._apply_rope(q, c0, s0), q)
        c5, s5 = ref._rope_tables(np.array([5]), 8, 10000.0, 1.0)
        self.assertAlmostEqual(np.linalg.norm(ref._apply_rope(q, c5, s5)), np.linalg.norm(q), places=12)

    def test_gqa_equals_mha_with_repeated_kv(self):
        # GQA 4/2: query head h reads KV head h // 2. Same as MHA whose K/V heads are [0,0,1,1].
        cfg = dict(BASE_CFG, num_key_value_heads=2)
        t = random_model(cfg, 4)
        save_model(os.path.join(self.tmp, "gqa"), cfg, t)
        mha = dict(t)
        for i in range(cfg["num_hidden_layers"]):
            for w in ("k_proj", "v_proj"):
                n = "model.layers.%d.self_attn.%s.weight" % (i, w)
                heads = t[n].reshape(2, 8, -1)
                mha[n] = np.concatenate([heads[0], heads[0], heads[1], heads[1]])
        save_model(os.path.join(self.tmp, "mha"), BASE_CFG, mha)
        toks = [5, 4, 3, 2, 1, 0, 10, 20]
        np.testing.assert_allclose(ref.logits(os.path.join(self.tmp, "gqa"), toks),
                                   ref.logits(os.path.join(self.tmp, "mha"), toks), rtol=0, atol=1e-12)

    def test_rsqa_equals_mha_with_tiled_queries(self):
        # rSQA Hq=2 < Hkv=4: head h uses query h % 2. Same as MHA whose Q heads are [0,1,0,1].
        cfg = dict(BASE_CFG, num_query_heads=2)
        t = random_model(cfg, 5)
        save_model(os.path.join(self.tmp, "rsqa"), cfg, t)
        mha = dict(t)
        for i in range(cfg["num_hidden_layers"]):
            n = "model.layers.%d.self_attn.q_proj.weight" % i
            heads = t[n].reshape(2, 8, -1)
            mha[n] = np.concatenate([heads[0], heads[1], heads[0], heads[1]])
        save_model(os.path.join(self.tmp, "mha"), BASE_CFG, mha)
        toks = [7, 8, 9, 1, 2, 3]
        np.testing.assert_allclose(ref.logits(os.path.join(self.tmp, "rsqa"), toks),
                                   ref.logits(os.path.join(self.tmp, "mha"), toks), rtol=0, atol=1e-12)

    def test_single_token_is_closed_form(self):
        # With one token attention is the identity on v, so the whole forward is a closed formula.
        cfg = dict(BASE_CFG, num_hidden_layers=1, tie_word_embeddings=True)
        t = {k: v.astype(np.float32).astype(np.float64) for k, v in random_model(cfg, 6).items()}
        del t["lm_head.weight"]
        save_model(self.tmp, cfg, t)
        tok = 11
        x = t["model.embed_tokens.weight"][tok]

        def norm(v, w):
            return v / np.sqrt(np.mean(v ** 2) + 1e-5) * w
        p = "model.layers.0."
        h = norm(x, t[p + "input_layernorm.weight"])
        x = x + t[p + "self_attn.o_proj.weight"] @ (t[p + "self_attn.v_proj.weight"] @ h)
        h = norm(x, t[p + "post_attention_layernorm.weight"])
        g, u = t[p + "mlp.gate_proj.weight"] @ h, t[p + "mlp.up_proj.weight"] @ h
        x = x + t[p + "mlp.down_proj.weight"] @ (g / (1 + np.exp(-g)) * u)
        want = t["model.embed_tokens.weight"] @ norm(x, t["model.norm.weight"])
        np.testing.assert_allclose(ref.logits(self.tmp, [tok])[0], want, rtol=1e-12, atol=1e-12)

    def test_row_blocking_is_exact(self):
        # The attention loop works on blocks of query rows; tiny blocks must give the same result.
        save_model(self.tmp, BASE_CFG, random_model(BASE_CFG, 8))
        m = ref.Model(self.tmp)
        toks = [int(t) for t in np.random.default_rng(8).integers(0, 50, 23)]
        whole = m.logits(toks)
        saved = ref._ROW_BLOCK
        try:
            ref._ROW_BLOCK = 5
            blocked = m.logits(toks)
        finally:
            ref._ROW_BLOCK = saved
        np.testing.assert_allclose(blocked, whole, rtol=0, atol=1e-12)

    def test_cli(self):
        save_model(self.tmp, BASE_CFG, random_model(BASE_CFG, 9))
        out = os.path.join(self.tmp, "l.npy")
        proc = subprocess.run([sys.executable, ref.__file__, "--model", self.tmp, "--prompt-tokens", "1,2,3,4",
                               "--logits-out", out], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        np.testing.assert_array_equal(np.load(out), ref.logits(self.tmp, [1, 2, 3, 4]))
        proc = subprocess.run([sys.executable, ref.__file__, "--model", self.tmp, "--prompt-tokens", "1,999",
                               "--logits-out", out], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("token ids must lie in [0, 50)", proc.stderr)

    def test_bad_files_give_clear_errors(self):
        save_model(self.tmp, BASE_CFG, random_model(BASE_CFG, 7))
        with open(os.path.join(self.tmp, "model.safetensors"), "r+b") as f:
            f.write(struct.pack("<Q", 1 << 40))
        with self.assertRaisesRegex(ref.ReferenceError, "header length"):
            ref.Model(self.tmp)
        with self.assertRaisesRegex(ref.ReferenceError, "cannot read"):
            ref.Model(os.path.join(self.tmp, "nowhere"))


def print_summary():
    if MAX_ERRORS:
        print("\nmax relative error per case (engine vs reference, tolerance %.0e):" % REL_TOL, file=sys.stderr)
        for k in sorted(MAX_ERRORS):
            print("  %-16s %.3e" % (k, MAX_ERRORS[k]), file=sys.stderr)


if __name__ == "__main__":
    prog = unittest.main(exit=False, verbosity=2)
    print_summary()
    sys.exit(0 if prog.result.wasSuccessful() else 1)
