#!/usr/bin/env python3
"""Hugging Face transformers baseline on an sqa-mkmodel directory (MHA/GQA layouts only).

Builds LlamaForCausalLM from the directory's config.json keys (sqa-mkmodel writes no
"model_type"), loads model.safetensors from the same directory, bf16, attn_implementation="sdpa",
and measures what sqa-e2e-bench measures:
  prefill: one sequence of N random tokens, forward with logits_to_keep=1 (only the last token's
           logits, as the engine), use_cache=False; tokens/s = N / seconds (median of --repeats
           after one warm-up at the smallest N). Before the timed runs of each N, untimed prefills
           of N tokens run for --sustain-s seconds (at least one), as sqa-e2e-bench does: the GPU
           then sits at the clock it holds under load (its power cap) instead of its idle boost.
  decode:  batch B of --decode-context-token prompts prefilled into a DynamicCache, then
           --decode-steps greedy steps of one token each; tokens/s = B * steps / seconds.
Prints one JSON object (also written to --json).

transformers' Llama cannot express num_query_heads != num_attention_heads (SQA family), so this
script refuses such configs.
"""
import argparse
import glob
import json
import os
import sys
import time

import torch


def load(model_dir):
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    h = c["num_attention_heads"]
    hq = c.get("num_query_heads") or h
    if hq != h:
        raise SystemExit("transformers' Llama cannot run Hq=%d != H=%d (SQA family); baseline is MHA/GQA only" % (hq, h))
    cfg = LlamaConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=h,
        num_key_value_heads=c.get("num_key_value_heads") or h,
        head_dim=c.get("head_dim") or c["hidden_size"] // h,
        max_position_embeddings=c.get("max_position_embeddings", 2048), rms_norm_eps=c.get("rms_norm_eps", 1e-5),
        rope_theta=c.get("rope_theta", 10000.0), tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model = model.to(dtype=torch.bfloat16)
    state = {}
    for fn in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
        state.update(load_file(fn, device="cuda"))
    if cfg.tie_word_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    # Plain copy into the initialized parameters (converted to bf16 by copy_).
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit("weights do not match LlamaForCausalLM: missing %s unexpected %s" % (missing[:5], unexpected[:5]))
    del state
    model.eval()
    return model, cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prefill", default="8192,32768,131072")
    ap.add_argument("--decode-batch", default="1,32")
    ap.add_argument("--decode-context", type=int, default=1024)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sustain-s", type=float, default=1.5)
    ap.add_argument("--json", default="")
    a = ap.parse_args()

    model, cfg = load(a.model)
    gen = torch.Generator(device="cuda").manual_seed(1234)
    V = cfg.vocab_size
    out = {"model": a.model, "framework": "transformers", "attn_implementation": "sdpa", "dtype": "bfloat16",
           "sustain_s": a.sustain_s,
           "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "prefill": [], "decode": []}
    import transformers
    out["transformers"] = transformers.__version__

    sizes = [int(x) for x in a.prefill.split(",") if x and x != "none"]
    with torch.inference_mode():
        if sizes:  # warm-up
            ids = torch.randint(0, V, (1, min(sizes[0], 2048)), device="cuda", generator=gen)
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            torch.cuda.synchronize()
        for n in sizes:
            ids = torch.randint(0, V, (1, n), device="cuda", generator=gen)
            t_end = time.perf_counter() + a.sustain_s
            while True:  # sustained load before timing (at least one run)
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
                torch.cuda.synchronize()
                if time.perf_counter() >= t_end:
                    break
            times = []
            for _ in range(a.repeats):
                ids = torch.randint(0, V, (1, n), device="cuda", generator=gen)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                logits = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
                logits.float().cpu()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
                del logits
            sec = sorted(times)[len(times) // 2]
            out["prefill"].append({"tokens": n, "seconds": sec, "tokens_per_second": n / sec})
            print("HF prefill %d: %.3f s, %.0f tok/s" % (n, sec, n / sec), file=sys.stderr, flush=True)
            torch.cuda.empty_cache()

        from transformers import DynamicCache
        for b in [int(x) for x in a.decode_batch.split(",") if x and x != "none"]:
            ids = torch.randint(0, V, (b, a.decode_context), device="cuda", generator=gen)
            cache = DynamicCache()
            r = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = r.logits[:, -1, :].argmax(-1, keepdim=True)
            sec = 0.0
            for step in range(a.decode_steps + 2):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                r = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                nxt = r.logits[:, -1, :].argmax(-1, keepdim=True)
                nxt.cpu()
                if step >= 2:
                    sec += time.perf_counter() - t0
            tps = b * a.decode_steps / sec
            out["decode"].append({"batch": b, "context": a.decode_context, "steps": a.decode_steps, "seconds": sec,
                                  "tokens_per_second": tps, "ms_per_step": 1e3 * sec / a.decode_steps})
            print("HF decode batch %d: %.0f tok/s" % (b, tps), file=sys.stderr, flush=True)
            del cache
            torch.cuda.empty_cache()

    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
