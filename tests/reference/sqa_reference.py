#!/usr/bin/python3
"""Independent NumPy (float64) implementation of the sqa-serve model, for checking the engine.

It reads the same model directory the engine reads (ARCHITECTURE.md section 2): config.json plus
model.safetensors or a sharded model.safetensors.index.json, with f32, bf16 or f16 weights. The math
is a Llama decoder whose attention runs Ha = max(Hq, Hkv) heads:
  Hq >= Hkv: head h uses query head h and KV head h // (Hq / Hkv) (GQA-style sharing);
  Hq <  Hkv: head h uses query head h % Hq and KV head h (rSQA: queries tiled over KV heads).
Everything is computed in float64 from the stored weights, one attention head at a time, so a few
thousand tokens fit comfortably in memory.

This file is deliberately written from the math alone (not from the C++ engine) so that it is an
independent check. Library use: `logits(model_dir, tokens)`; CLI:
  sqa_reference.py --model DIR --prompt-tokens 1,2,3 --logits-out F.npy
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np


class ReferenceError(Exception):
    """A model directory that the reference cannot read, with a message naming the problem."""


# ------------------------------------------------------------------------------------------------
# safetensors

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def _decode(raw, dtype, shape):
    """Raw little-endian bytes -> float64 array of `shape`."""
    if dtype == "F64":
        arr = np.frombuffer(raw, dtype="<f8")
    elif dtype == "F32":
        arr = np.frombuffer(raw, dtype="<f4")
    elif dtype == "F16":
        arr = np.frombuffer(raw, dtype="<f2")
    elif dtype == "BF16":
        # bf16 is the top half of an IEEE f32: widen the 16 bits into the high half of a u32.
        u16 = np.frombuffer(raw, dtype="<u2")
        arr = (u16.astype(np.uint32) << np.uint32(16)).view(np.float32)
    else:
        raise ReferenceError("unsupported dtype %r" % dtype)
    return arr.astype(np.float64).reshape(shape)


def read_safetensors(path):
    """Returns {name: float64 ndarray} and {name: dtype string} for one safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ReferenceError("%s: file too short for a safetensors header" % path)
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > len(blob) - 8:
        raise ReferenceError("%s: header length %d exceeds file size %d" % (path, header_len, len(blob)))
    try:
        header = json.loads(blob[8:8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReferenceError("%s: header is not valid JSON: %s" % (path, e))
    data = memoryview(blob)[8 + header_len:]
    tensors, dtypes = {}, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = info["dtype"], [int(s) for s in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
        if dtype not in _DTYPE_BYTES:
            raise ReferenceError("%s: tensor %s has unsupported dtype %s" % (path, name, dtype))
        want = int(np.prod(shape, dtype=np.int64)) * _DTYPE_BYTES[dtype]
        if not (0 <= begin <= end <= len(data)) or end - begin != want:
            raise ReferenceError("%s: tensor %s offsets [%d, %d) do not match shape %s %s (data %d bytes)"
                                 % (path, name, begin, end, shape, dtype, len(data)))
        tensors[name] = _decode(bytes(data[begin:end]), dtype, shape)
        dtypes[name] = dtype
    return tensors, dtypes


def read_model_tensors(model_dir):
    """All tensors of a model directory (single file or sharded through the index)."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    single_path = os.path.join(model_dir, "model.safetensors")
    tensors, dtypes = {}, {}
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        for shard in sorted(set(weight_map.values())):
            t, d = read_safetensors(os.path.join(model_dir, shard))
            for name in t:
                if weight_map.get(name) != shard:
                    raise ReferenceError("%s: tensor %s is not mapped to this shard by the index" % (shard, name))
                if name in tensors:
                    raise ReferenceError("tensor %s appears in two shards" % name)
            tensors.update(t)
            dtypes.update(d)
        missing = set(weight_map) - set(tensors)
        if missing:
            raise ReferenceError("index names tensors missing from the shards: %s" % sorted(missing)[:5])
    elif os.path.exists(single_path):
        tensors, dtypes = read_safetensors(single_path)
    else:
        raise ReferenceError("%s has neither model.safetensors nor model.safetensors.index.json" % model_dir)
    return tensors, dtypes


# ------------------------------------------------------------------------------------------------
# config

class Config:
    def __init__(self, raw):
        def need(key):
            if key not in raw:
                raise ReferenceError("config.json lacks %r" % key)
            return raw[key]

        self.hidden = int(need("hidden_size"))
        self.layers = int(need("num_hidden_layers"))
        self.heads = int(need("num_attention_heads"))
        self.q_heads = int(raw.get("num_query_heads") or self.heads)
        self.kv_heads = int(raw.get("num_key_value_heads") or self.heads)
        self.head_dim = int(raw.get("head_dim") or self.hidden // self.heads)
        self.intermediate = int(need("intermediate_size"))
        self.vocab = int(need("vocab_size"))
        # Defaults follow the project's documented config defaults (model/config.h).
        self.eps = float(raw.get("rms_norm_eps", 1e-5))
        self.theta = float(raw.get("rope_theta", 10000.0))
        self.tie = bool(raw.get("tie_word_embeddings", False))
        self.rope_factor = 1.0
        scaling = raw.get("rope_scaling")
        if scaling:
            kind = scaling.get("rope_type", scaling.get("type"))
            if kind not in ("linear", "none", None):
                raise ReferenceError("rope_scaling type %r is not supported (linear only)" % kind)
            if kind == "linear":
                self.rope_factor = float(scaling["factor"])
        if self.head_dim % 2:
            raise ReferenceError("head_dim %d must be even for RoPE" % self.head_dim)
        big, small = max(self.q_heads, self.kv_heads), min(self.q_heads, self.kv_heads)
        if big % small:
            raise ReferenceError("Hq=%d and Hkv=%d: the larger must be a multiple of the smaller"
                                 % (self.q_heads, self.kv_heads))

    @property
    def attn_heads(self):
        return max(self.q_heads, self.kv_heads)


def head_map(q_heads, kv_heads, rsqa="tile"):
    """[(query head, kv head)] for each of the Ha = max(Hq, Hkv) attention heads.

    `rsqa` exists only so the test suite can show it tells conventions apart: "tile" is the
    specified one (head h uses query h % Hq); "repeat" would use query h // (Hkv / Hq).
    """
    if q_heads >= kv_heads:
        group = q_heads // kv_heads
        return [(h, h // group) for h in range(q_heads)]
    if rsqa == "tile":
        return [(h % q_heads, h) for h in range(kv_heads)]
    rep = kv_heads // q_heads
    return [(h // rep, h) for h in range(kv_heads)]


# ------------------------------------------------------------------------------------------------
# model

_ROW_BLOCK = 512  # query rows per attention block: bounds memory at 512 x n scores per head


def _rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _rope_tables(positions, head_dim, theta, factor):
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    freqs = np.outer(positions.astype(np.float64) / factor, inv_freq)  # [n, dh/2]
    emb = np.concatenate([freqs, freqs], axis=-1)                       # [n, dh]
    return np.cos(emb), np.sin(emb)


def _apply_rope(x, cos, sin):
    """x: [n, heads, dh]; HF rotate-half convention."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


class Model:
    def __init__(self, model_dir):
        cfg_path = os.path.join(model_dir, "config.json")
        try:
            with open(cfg_path) as f:
                self.cfg = Config(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            raise ReferenceError("cannot read %s: %s" % (cfg_path, e))
        self.t, self.dtypes = read_model_tensors(model_dir)
        self._check_shapes()

    def _w(self, name):
        if name not in self.t:
            raise ReferenceError("model lacks tensor %s" % name)
        return self.t[name]

    def _lm_head(self):
        if self.cfg.tie:
            return self._w("model.embed_tokens.weight")
        return self._w("lm_head.weight")

    def _check_shapes(self):
        c = self.cfg
        dh, d = c.head_dim, c.hidden
        want = {"model.embed_tokens.weight": (c.vocab, d), "model.norm.weight": (d,)}
        if not c.tie:
            want["lm_head.weight"] = (c.vocab, d)
        for i in range(c.layers):
            p = "model.layers.%d." % i
            want[p + "input_layernorm.weight"] = (d,)
            want[p + "post_attention_layernorm.weight"] = (d,)
            want[p + "self_attn.q_proj.weight"] = (c.q_heads * dh, d)
            want[p + "self_attn.k_proj.weight"] = (c.kv_heads * dh, d)
            want[p + "self_attn.v_proj.weight"] = (c.kv_heads * dh, d)
            want[p + "self_attn.o_proj.weight"] = (d, c.attn_heads * dh)
            want[p + "mlp.gate_proj.weight"] = (c.intermediate, d)
            want[p + "mlp.up_proj.weight"] = (c.intermediate, d)
            want[p + "mlp.down_proj.weight"] = (d, c.intermediate)
        for name, shape in want.items():
            got = self._w(name).shape
            if tuple(got) != shape:
                raise ReferenceError("tensor %s has shape %s, expected %s" % (name, list(got), list(shape)))

    def hidden_states(self, tokens, rsqa="tile"):
        """Final-normed hidden states [n, d] for the token ids (positions 0..n-1)."""
        c = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ReferenceError("tokens must be a non-empty 1-D list")
        if tokens.min() < 0 or tokens.max() >= c.vocab:
            raise ReferenceError("token ids must lie in [0, %d)" % c.vocab)
        n, dh = tokens.size, c.head_dim
        cos, sin = _rope_tables(np.arange(n), dh, c.theta, c.rope_factor)
        scale = 1.0 / math.sqrt(dh)
        # Additive causal mask for a diagonal block: -inf where the key comes after the query.
        causal_block = np.where(np.triu(np.ones((_ROW_BLOCK, _ROW_BLOCK), dtype=bool), k=1), -np.inf, 0.0)
        mapping = head_map(c.q_heads, c.kv_heads, rsqa)

        x = self._w("model.embed_tokens.weight")[tokens]
        for i in range(c.layers):
            p = "model.layers.%d." % i
            h = _rmsnorm(x, self._w(p + "input_layernorm.weight"), c.eps)
            q = (h @ self._w(p + "self_attn.q_proj.weight").T).reshape(n, c.q_heads, dh)
            k = (h @ self._w(p + "self_attn.k_proj.weight").T).reshape(n, c.kv_heads, dh)
            v = (h @ self._w(p + "self_attn.v_proj.weight").T).reshape(n, c.kv_heads, dh)
            q = _apply_rope(q, cos, sin)
            k = _apply_rope(k, cos, sin)
            attn = np.empty((n, len(mapping), dh))
            for a, (qi, ki) in enumerate(mapping):
                # Blocks of query rows; rows [r0, r1) see keys [0, r1) with a causal mask.
                for r0 in range(0, n, _ROW_BLOCK):
                    r1 = min(n, r0 + _ROW_BLOCK)
                    s = q[r0:r1, qi, :] @ k[:r1, ki, :].T
                    s *= scale
                    s[:, r0:r1] += causal_block[:r1 - r0, :r1 - r0]
                    s -= s.max(axis=1, keepdims=True)
                    np.exp(s, out=s)
                    s /= s.sum(axis=1, keepdims=True)
                    attn[r0:r1, a, :] = s @ v[:r1, ki, :]
            x = x + attn.reshape(n, -1) @ self._w(p + "self_attn.o_proj.weight").T
            h = _rmsnorm(x, self._w(p + "post_attention_layernorm.weight"), c.eps)
            gate = h @ self._w(p + "mlp.gate_proj.weight").T
            up = h @ self._w(p + "mlp.up_proj.weight").T
            x = x + (_silu(gate) * up) @ self._w(p + "mlp.down_proj.weight").T
        return _rmsnorm(x, self._w("model.norm.weight"), c.eps)

    def logits(self, tokens, rsqa="tile"):
        """[n, vocab] float64 logits of every position."""
        return self.hidden_states(tokens, rsqa) @ self._lm_head().T


def logits(model_dir, tokens):
    """[n, vocab] float64 logits for `tokens` (positions 0..n-1) of the model in `model_dir`."""
    return Model(model_dir).logits(tokens)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="model directory (config.json + safetensors)")
    ap.add_argument("--prompt-tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--logits-out", required=True, help="output .npy file, float64 [n, vocab]")
    args = ap.parse_args(argv)
    try:
        tokens = [int(t) for t in args.prompt_tokens.split(",") if t.strip()]
    except ValueError:
        print("error: --prompt-tokens must be comma-separated integers", file=sys.stderr)
        return 2
    try:
        out = logits(args.model, tokens)
    except ReferenceError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    np.save(args.logits_out, out)
    print("wrote %s %s; greedy next token %d" % (args.logits_out, list(out.shape), int(out[-1].argmax())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
