// sqa-e2e-bench: end-to-end prefill and decode throughput of the engine on one model directory.
//
//   sqa-e2e-bench --model DIR [--device cuda] [--prefill 8192,32768,131072] [--chunk 16384]
//                 [--decode-batch 1,32] [--decode-context 1024] [--decode-steps 32]
//                 [--cuda-graphs on|off|both] [--skinny-gemm on|off] [--skinny-max-rows N]
//                 [--skinny-stream auto|all|off] [--skinny-warps auto|8|16]
//                 [--decode-kernel auto|v10|v8|v6|v5|v5w|v4] [--decode-splits 0] [--decode-fuse-min-keys 0]
//                 [--fuse-rope-kv on|off] [--sustain-s 1.5] [--json F]
//
// Prefill: one sequence of N random tokens through Engine::Prefill (chunked by --chunk), timed
// from the call to the last-token logits on the host; tokens/s = N / seconds. One untimed warm-up
// prefill (min(N, 2048) tokens) runs first per engine; then, before each N is timed, untimed
// prefills of N tokens run for --sustain-s seconds (at least one), so the GPU is timed at the
// clock it holds under load (its power cap) rather than its idle boost; hf_baseline.py does the
// same. Decode: B sequences with prompts of
// --decode-context tokens, then --decode-steps batched greedy steps (each one Engine::Forward of B
// one-token segments sampled by the engine: on the GPU with CUDA, only the token ids come back)
// after two warm-up steps (which also capture the step's CUDA graph); tokens/s =
// B * steps / seconds. --cuda-graphs both measures every batch with graphs on and again off (one
// decode row each, "cuda_graphs": true/false). --skinny-gemm off sends decode-sized GEMMs to
// cuBLASLt too (BackendOptions::skinny_gemm), for a side-by-side run, and --skinny-max-rows 8 those
// of 9-32 rows only (BackendOptions::skinny_max_rows: the skinny kernel's wide form off);
// --skinny-stream off|all turns its stream form off or on for every shape it takes
// (BackendOptions::skinny_stream; auto: where it is the faster choice); --skinny-warps forces the
// skinny kernel's CTA shape (BackendOptions::skinny_warps); --decode-kernel picks the decode attention kernel
// (BackendOptions::decode_kernel) the same way, --decode-splits and --decode-fuse-min-keys its
// split count and in-kernel merge threshold (0: automatic), --fuse-rope-kv off runs RoPE and the
// K/V cache write as two kernels (BackendOptions::fuse_rope_kv). Prints one JSON object (also
// written to --json).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "workers/engine/backend.h"
#include "workers/engine/engine.h"
#include "workers/engine/model/model.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Flags {
  std::string model;
  std::string device = "cuda";
  std::vector<int64_t> prefill = {8192, 32768, 131072};
  int64_t chunk = 16384;
  std::vector<int64_t> decode_batch = {1, 32};
  int64_t decode_context = 1024;
  int64_t decode_steps = 32;
  int64_t block_size = 64;
  std::string cuda_graphs = "on";
  bool skinny_gemm = true;
  int64_t skinny_max_rows = 0;
  std::string skinny_stream = "auto";
  std::string skinny_warps = "auto";
  std::string decode_kernel = "auto";
  int64_t decode_splits = 0;
  int64_t decode_fuse_min_keys = 0;
  bool fuse_rope_kv = true;
  double sustain_s = 1.5;
  std::string json;
};

bool ParseList(const std::string& s, std::vector<int64_t>* out) {
  out->clear();
  if (s.empty() || s == "none") return true;
  for (absl::string_view p : absl::StrSplit(s, ',')) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(p, &v) || v <= 0) return false;
    out->push_back(v);
  }
  return true;
}

int Usage(const std::string& why) {
  std::cerr << "sqa-e2e-bench: " << why
            << "\nusage: sqa-e2e-bench --model DIR [--device cuda|cpu] [--prefill N,N|none] [--chunk C]\n"
               "         [--decode-batch B,B|none] [--decode-context T] [--decode-steps S] [--block-size K]\n"
               "         [--cuda-graphs on|off|both] [--skinny-gemm on|off] [--skinny-max-rows N] [--skinny-stream auto|all|off] [--skinny-warps auto|8|16]\n"
               "         [--decode-kernel auto|v10|v8|v6|v5|v5w|v4] [--decode-splits N] [--decode-fuse-min-keys K]\n"
               "         [--fuse-rope-kv on|off] [--sustain-s S] [--json F]\n";
  return 2;
}

std::vector<int32_t> RandomTokens(std::mt19937_64& rng, int64_t n, int64_t vocab) {
  std::uniform_int_distribution<int32_t> d(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = d(rng);
  return t;
}

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) return Usage("flag " + a + " needs a value");
    const std::string v = argv[++i];
    int64_t n = 0;
    if (a == "--model") {
      f.model = v;
    } else if (a == "--device") {
      f.device = v;
    } else if (a == "--json") {
      f.json = v;
    } else if (a == "--cuda-graphs") {
      if (v != "on" && v != "off" && v != "both") return Usage("--cuda-graphs wants on, off or both, got " + v);
      f.cuda_graphs = v;
    } else if (a == "--skinny-gemm") {
      if (v != "on" && v != "off") return Usage("--skinny-gemm wants on or off, got " + v);
      f.skinny_gemm = v == "on";
    } else if (a == "--skinny-max-rows") {
      if (!absl::SimpleAtoi(v, &n) || n < 0 || n > 32) return Usage("bad --skinny-max-rows " + v + " (0..32, 0: 32)");
      f.skinny_max_rows = n;
    } else if (a == "--skinny-stream") {
      if (v != "auto" && v != "all" && v != "off") return Usage("--skinny-stream wants auto, all or off, got " + v);
      f.skinny_stream = v;
    } else if (a == "--skinny-warps") {
      if (v != "auto" && v != "8" && v != "16") return Usage("--skinny-warps wants auto, 8 or 16, got " + v);
      f.skinny_warps = v;
    } else if (a == "--decode-kernel") {
      if (v != "auto" && v != "v10" && v != "v8" && v != "v6" && v != "v5" && v != "v5w" && v != "v4") {
        return Usage("--decode-kernel wants auto, v10, v8, v6, v5, v5w or v4, got " + v);
      }
      f.decode_kernel = v;
    } else if (a == "--decode-splits" || a == "--decode-fuse-min-keys") {
      if (!absl::SimpleAtoi(v, &n) || n < 0 || n > (1 << 20)) return Usage("bad " + a + " " + v + " (0: automatic)");
      (a == "--decode-splits" ? f.decode_splits : f.decode_fuse_min_keys) = n;
    } else if (a == "--fuse-rope-kv") {
      if (v != "on" && v != "off") return Usage("--fuse-rope-kv wants on or off, got " + v);
      f.fuse_rope_kv = v == "on";
    } else if (a == "--sustain-s") {
      if (!absl::SimpleAtod(v, &f.sustain_s) || f.sustain_s < 0) return Usage("bad --sustain-s " + v);
    } else if (a == "--prefill") {
      if (!ParseList(v, &f.prefill)) return Usage("bad --prefill " + v);
    } else if (a == "--decode-batch") {
      if (!ParseList(v, &f.decode_batch)) return Usage("bad --decode-batch " + v);
    } else if (a == "--chunk" || a == "--decode-context" || a == "--decode-steps" || a == "--block-size") {
      if (!absl::SimpleAtoi(v, &n) || n <= 0) return Usage("bad " + a + " " + v);
      (a == "--chunk" ? f.chunk : a == "--decode-context" ? f.decode_context
                                : a == "--decode-steps"   ? f.decode_steps
                                                          : f.block_size) = n;
    } else {
      return Usage("unknown flag " + a);
    }
  }
  if (f.model.empty()) return Usage("--model is required");

  auto kind = sqa::ParseDeviceKind(f.device);
  if (!kind.ok()) return Usage(std::string(kind.status().message()));
  const auto t_load = Clock::now();
  auto model_or = sqa::Model::Load(f.model);
  if (!model_or.ok()) {
    std::cerr << "sqa-e2e-bench: " << model_or.status() << "\n";
    return 2;
  }
  std::shared_ptr<const sqa::Model> model(std::move(model_or).value());
  const sqa::ModelConfig& cfg = model->config();

  // One engine whose KV cache holds the largest prefill or the whole decode batch.
  int64_t need_tokens = 0;
  for (int64_t n : f.prefill) need_tokens = std::max(need_tokens, n);
  for (int64_t b : f.decode_batch) {
    need_tokens = std::max(need_tokens, b * (f.decode_context + f.decode_steps + 2 + f.block_size));
  }
  sqa::BackendOptions bo;
  bo.device = *kind;
  bo.skinny_gemm = f.skinny_gemm;
  bo.skinny_warps = f.skinny_warps;
  bo.skinny_max_rows = static_cast<int>(f.skinny_max_rows);
  bo.skinny_stream = f.skinny_stream;
  bo.decode_kernel = f.decode_kernel;
  bo.decode_splits = static_cast<int>(f.decode_splits);
  bo.decode_fuse_min_keys = static_cast<int>(f.decode_fuse_min_keys);
  bo.fuse_rope_kv = f.fuse_rope_kv;
  auto be = sqa::CreateBackend(bo);
  if (!be.ok()) {
    std::cerr << "sqa-e2e-bench: " << be.status() << "\n";
    return 1;
  }
  const std::string backend_name = (*be)->name();
  sqa::EngineOptions eo;
  eo.block_size = f.block_size;
  eo.num_kv_blocks = need_tokens / f.block_size + 2 * static_cast<int64_t>(f.decode_batch.size()) + 64;
  eo.max_chunk_tokens = f.chunk;
  eo.cuda_graphs = f.cuda_graphs == "off" ? sqa::StepGraphMode::kOff : sqa::StepGraphMode::kOn;
  auto engine_or = sqa::Engine::Create(model, std::move(be).value(), eo);
  if (!engine_or.ok()) {
    std::cerr << "sqa-e2e-bench: " << engine_or.status() << "\n";
    return 1;
  }
  sqa::Engine& engine = **engine_or;
  const double load_s = Seconds(t_load, Clock::now());

  nlohmann::json out;
  out["model"] = f.model;
  out["layout"] = cfg.LayoutName();
  out["skinny_gemm"] = f.skinny_gemm;
  out["skinny_warps"] = f.skinny_warps;
  out["skinny_max_rows"] = f.skinny_max_rows;
  out["skinny_stream"] = f.skinny_stream;
  out["decode_kernel"] = f.decode_kernel;
  out["decode_splits"] = f.decode_splits;
  out["decode_fuse_min_keys"] = f.decode_fuse_min_keys;
  out["fuse_rope_kv"] = f.fuse_rope_kv;
  out["hidden_size"] = cfg.hidden_size;
  out["layers"] = cfg.num_hidden_layers;
  out["num_attention_heads"] = cfg.num_attention_heads;
  out["num_query_heads"] = cfg.num_query_heads;
  out["num_key_value_heads"] = cfg.num_key_value_heads;
  out["head_dim"] = cfg.head_dim;
  out["backend"] = backend_name;
  out["chunk_tokens"] = f.chunk;
  out["block_size"] = f.block_size;
  out["sustain_s"] = f.sustain_s;
  out["load_seconds"] = load_s;
  std::mt19937_64 rng(12345);

  // Warm-up: GEMM plans, kernels, pool memory.
  {
    const sqa::SeqId s = engine.NewSequence();
    auto w = engine.Prefill(s, RandomTokens(rng, std::min<int64_t>(2048, f.chunk), cfg.vocab_size), false);
    engine.Release(s);
    if (!w.ok()) {
      std::cerr << "sqa-e2e-bench: warm-up failed: " << w.status() << "\n";
      return 1;
    }
  }

  out["prefill"] = nlohmann::json::array();
  for (int64_t n : f.prefill) {
    const std::vector<int32_t> tokens = RandomTokens(rng, n, cfg.vocab_size);
    // Sustained load before timing (at least one run).
    for (const auto t_end = Clock::now() + std::chrono::duration<double>(f.sustain_s);;) {
      const sqa::SeqId w = engine.NewSequence();
      auto r = engine.Prefill(w, tokens, false);
      engine.Release(w);
      if (!r.ok()) {
        std::cerr << "sqa-e2e-bench: sustained-load prefill of " << n << " tokens failed: " << r.status() << "\n";
        return 1;
      }
      if (Clock::now() >= t_end) break;
    }
    const sqa::SeqId s = engine.NewSequence();
    const auto t0 = Clock::now();
    auto r = engine.Prefill(s, tokens, false);
    const double sec = Seconds(t0, Clock::now());
    engine.Release(s);
    if (!r.ok()) {
      std::cerr << "sqa-e2e-bench: prefill of " << n << " tokens failed: " << r.status() << "\n";
      return 1;
    }
    out["prefill"].push_back({{"tokens", n}, {"seconds", sec}, {"tokens_per_second", n / sec}});
    std::cerr << cfg.LayoutName() << " prefill " << n << ": " << sec << " s, " << n / sec << " tok/s\n";
  }

  out["decode"] = nlohmann::json::array();
  std::vector<bool> graph_modes;
  if (f.cuda_graphs != "off") graph_modes.push_back(true);
  if (f.cuda_graphs != "on") graph_modes.push_back(false);
  const sqa::SamplingParams greedy;
  for (int64_t b : f.decode_batch) {
    for (bool graphs : graph_modes) {
      engine.SetStepGraphMode(graphs ? sqa::StepGraphMode::kOn : sqa::StepGraphMode::kOff);
      const sqa::StepGraphStats before = engine.step_graph_stats();
      std::vector<sqa::SeqId> seqs;
      std::vector<int32_t> next(static_cast<size_t>(b));
      for (int64_t i = 0; i < b; ++i) {
        seqs.push_back(engine.NewSequence());
        auto r = engine.Prefill(seqs.back(), RandomTokens(rng, f.decode_context, cfg.vocab_size), false);
        if (!r.ok()) {
          std::cerr << "sqa-e2e-bench: decode prompt failed: " << r.status() << "\n";
          return 1;
        }
        next[static_cast<size_t>(i)] =
            static_cast<int32_t>(std::max_element(r->row(0), r->row(0) + r->vocab) - r->row(0));
      }
      double sec = 0;
      for (int64_t step = 0; step < f.decode_steps + 2; ++step) {
        std::vector<sqa::Engine::Segment> segs;
        for (int64_t i = 0; i < b; ++i) {
          sqa::Engine::Segment seg{seqs[i], absl::MakeConstSpan(&next[i], 1), false};
          seg.sample = &greedy;
          seg.sample_step = static_cast<uint64_t>(step);
          segs.push_back(seg);
        }
        const auto t0 = Clock::now();
        auto r = engine.Forward(segs);
        if (step >= 2) sec += Seconds(t0, Clock::now());
        if (!r.ok()) {
          std::cerr << "sqa-e2e-bench: decode step failed: " << r.status() << "\n";
          return 1;
        }
        for (int64_t i = 0; i < b; ++i) next[static_cast<size_t>(i)] = r->sampled[static_cast<size_t>(i)].token;
      }
      for (sqa::SeqId s : seqs) engine.Release(s);
      const sqa::StepGraphStats& after = engine.step_graph_stats();
      const double tps = static_cast<double>(b * f.decode_steps) / sec;
      out["decode"].push_back({{"batch", b},
                               {"context", f.decode_context},
                               {"steps", f.decode_steps},
                               {"cuda_graphs", graphs},
                               {"graph_replays", after.replays - before.replays},
                               {"graph_captures", after.captures - before.captures},
                               {"graph_capture_failures", after.capture_failures - before.capture_failures},
                               {"seconds", sec},
                               {"tokens_per_second", tps},
                               {"ms_per_step", 1e3 * sec / static_cast<double>(f.decode_steps)}});
      std::cerr << cfg.LayoutName() << " decode batch " << b << " (cuda graphs " << (graphs ? "on" : "off")
                << "): " << tps << " tok/s, " << 1e3 * sec / static_cast<double>(f.decode_steps) << " ms/step, "
                << after.replays - before.replays << " graph replays\n";
    }
  }

  const std::string text = out.dump(1);
  std::cout << text << "\n";
  if (!f.json.empty()) {
    std::ofstream o(f.json);
    o << text << "\n";
    if (!o) {
      std::cerr << "sqa-e2e-bench: cannot write " << f.json << "\n";
      return 1;
    }
  }
  return 0;
}
