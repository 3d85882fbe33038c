#!/usr/bin/env python3
"""Writes the seed corpus for the fuzz entries (run from anywhere; output is committed).

corpus/safetensors: small valid files (several dtypes, metadata, empty tensors, scalars) and
hand-broken variants; corpus/config: config.json variants. replay_main mutates each further.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def st(header_obj, data, pad=True, declared=None):
    h = json.dumps(header_obj, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    n = len(h) if declared is None else declared
    return struct.pack("<Q", n) + h + data


def write(sub, name, blob):
    d = os.path.join(HERE, "corpus", sub)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(blob if isinstance(blob, bytes) else blob.encode())


def main():
    f32 = struct.pack("<6f", 1, -2, 3.5, 0, 1e-3, -7)
    write("safetensors", "valid_f32.bin",
          st({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, f32))
    write("safetensors", "valid_mixed.bin", st({
        "__metadata__": {"format": "pt"},
        "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "i": {"dtype": "I32", "shape": [], "data_offsets": [8, 12]},
        "b": {"dtype": "BF16", "shape": [2], "data_offsets": [12, 16]},
        "h": {"dtype": "F16", "shape": [1, 2], "data_offsets": [16, 20]},
        "e": {"dtype": "F16", "shape": [0, 3], "data_offsets": [20, 20]},
    }, bytes(range(20))))
    write("safetensors", "overlap.bin", st({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)))
    write("safetensors", "truncated.bin",
          st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(10)))
    write("safetensors", "length_past_end.bin", st({}, b"", declared=4096))
    write("safetensors", "bad_dtype.bin",
          st({"a": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)))
    write("safetensors", "huge_shape.bin",
          st({"a": {"dtype": "BF16", "shape": [4294967296, 4294967296], "data_offsets": [0, 2]}}, bytes(2)))
    write("safetensors", "unaligned.bin",
          st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, bytes(8)))
    raw = b'{"\xff":1}'
    write("safetensors", "not_utf8.bin", struct.pack("<Q", len(raw)) + raw)
    write("safetensors", "nested.bin", st({"a": [[[[[[[[[[1]]]]]]]]]]}, b""))
    write("safetensors", "tiny.bin", b"\x02\x00\x00\x00\x00\x00\x00\x00{}")

    base = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8, "intermediate_size": 128,
            "vocab_size": 256, "max_position_embeddings": 4096}
    write("config", "minimal.json", json.dumps(base))
    write("config", "sqa.json", json.dumps(dict(base, num_query_heads=4, num_key_value_heads=2, head_dim=8,
                                                rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                                                torch_dtype="bfloat16")))
    write("config", "rsqa_scaling.json", json.dumps(dict(base, num_query_heads=2, num_key_value_heads=4,
                                                         rope_scaling={"type": "linear", "factor": 4.0})))
    write("config", "hf_llama.json", json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "hidden_size": 4096,
        "intermediate_size": 14336, "max_position_embeddings": 8192, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
        "rope_scaling": None, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "vocab_size": 128256}, indent=2))
    write("config", "yarn.json", json.dumps(dict(base, rope_scaling={"rope_type": "yarn", "factor": 4})))
    write("config", "bad_types.json", json.dumps(dict(base, num_key_value_heads="2", head_dim=8.5)))
    write("config", "not_utf8.json", b'{"hidden_size": 64, "name": "\xc0\xaf"}')


if __name__ == "__main__":
    main()
