// sqa-run: loads a model, prefills one or more prompts (chunked), then decodes them together in
// batched steps, optionally writing logits (.npy) and tokens (JSON). Thin main: flags and wiring.
//
// Output contract (the NumPy reference tests depend on it):
//   --logits-out F.npy         float32 [prompt_len, vocab]: logits at every prompt position
//   --decode-logits-out F.npy  float32 [generated - 1, vocab]: row t = logits after feeding
//                              generated token t (token t + 1 was sampled from it)
//   With several sequences, X.npy becomes X.<i>.npy for sequence i.
//   --tokens-out F.json        {"sequences": [{"prompt_tokens": P, "generated": [...],
//                               "tokens": [...same...], "finish_reason": "length" | "stop"}]}
// Exit codes: 0 ok, 1 runtime failure, 2 bad input (flags, model directory, prompt).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "workers/engine/backend.h"
#include "workers/engine/engine.h"
#include "workers/engine/model/model.h"
#include "workers/engine/npy.h"
#include "workers/engine/sampling.h"

namespace {

constexpr char kUsage[] =
    "usage: sqa-run --model DIR (--prompt-tokens 1,2,3 | --prompt-file F | --synthetic-prompt N)...\n"
    "               [--generate N] [--logits-out F.npy] [--decode-logits-out F.npy] [--tokens-out F.json]\n"
    "               [--chunk-tokens C] [--block-size B] [--kv-cache-mb M] [--device cpu|cuda|auto]\n"
    "               [--threads T] [--temperature t] [--top-k k] [--top-p p] [--seed s] [--stop-tokens 1,2]\n"
    "               [--cuda-graphs on|off]\n"
    "Each prompt flag adds one sequence to the batch. A prompt file holds token ids separated by commas\n"
    "or whitespace. --synthetic-prompt N makes N ids: token j of sequence i is\n"
    "floor(UniformFromSeed(seed + i, j) * vocab). Without --kv-cache-mb the cache is sized to fit the batch.\n"
    "Decode steps sample in the engine (on the GPU with --device cuda, as CUDA graphs unless --cuda-graphs off).\n";

struct PromptSpec {
  enum Kind { kTokens, kFile, kSynthetic } kind;
  std::string value;
};

struct Flags {
  std::string model;
  std::vector<PromptSpec> prompts;
  int64_t generate = 0;
  std::string logits_out, decode_logits_out, tokens_out;
  int64_t chunk_tokens = 2048;
  int64_t block_size = 64;
  int64_t kv_cache_mb = 0;  // 0: fit the batch
  std::string device = "cpu";
  int64_t threads = 0;
  sqa::SamplingParams sampling;
  std::string stop_tokens;
  sqa::StepGraphMode cuda_graphs = sqa::StepGraphMode::kOn;
};

absl::Status BadFlag(const std::string& flag, const std::string& value, const std::string& want) {
  return absl::InvalidArgumentError(absl::StrCat(flag, ": \"", value, "\" is not ", want));
}

absl::StatusOr<int64_t> ParseInt(const std::string& flag, const std::string& v, int64_t lo, int64_t hi) {
  int64_t x;
  if (!absl::SimpleAtoi(v, &x) || x < lo || x > hi) {
    return BadFlag(flag, v, absl::StrCat("an integer in [", lo, ", ", hi, "]"));
  }
  return x;
}

absl::StatusOr<double> ParseDouble(const std::string& flag, const std::string& v) {
  double x;
  if (!absl::SimpleAtod(v, &x) || !std::isfinite(x)) return BadFlag(flag, v, "a number");
  return x;
}

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& what, const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, absl::ByAnyChar(", \t\r\n"), absl::SkipEmpty())) {
    int64_t x;
    if (!absl::SimpleAtoi(part, &x) || x < 0 || x > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": \"", part, "\" is not a token id (an integer >= 0)"));
    }
    ids.push_back(static_cast<int32_t>(x));
  }
  return ids;
}

absl::StatusOr<Flags> ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", arg, "\""));
    std::string name = arg, value;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    } else {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat(name, " needs a value"));
      value = argv[++i];
    }
    if (name == "--model") {
      f.model = value;
    } else if (name == "--prompt-tokens") {
      f.prompts.push_back({PromptSpec::kTokens, value});
    } else if (name == "--prompt-file") {
      f.prompts.push_back({PromptSpec::kFile, value});
    } else if (name == "--synthetic-prompt") {
      f.prompts.push_back({PromptSpec::kSynthetic, value});
    } else if (name == "--generate") {
      auto v = ParseInt(name, value, 0, 1 << 24);
      if (!v.ok()) return v.status();
      f.generate = *v;
    } else if (name == "--logits-out") {
      f.logits_out = value;
    } else if (name == "--decode-logits-out") {
      f.decode_logits_out = value;
    } else if (name == "--tokens-out") {
      f.tokens_out = value;
    } else if (name == "--chunk-tokens") {
      auto v = ParseInt(name, value, 1, 1 << 24);
      if (!v.ok()) return v.status();
      f.chunk_tokens = *v;
    } else if (name == "--block-size") {
      auto v = ParseInt(name, value, 1, 1 << 16);
      if (!v.ok()) return v.status();
      f.block_size = *v;
    } else if (name == "--kv-cache-mb") {
      auto v = ParseInt(name, value, 1, int64_t{1} << 30);
      if (!v.ok()) return v.status();
      f.kv_cache_mb = *v;
    } else if (name == "--device") {
      f.device = value;
    } else if (name == "--threads") {
      auto v = ParseInt(name, value, 0, 4096);
      if (!v.ok()) return v.status();
      f.threads = *v;
    } else if (name == "--temperature") {
      auto v = ParseDouble(name, value);
      if (!v.ok()) return v.status();
      f.sampling.temperature = static_cast<float>(*v);
    } else if (name == "--top-k") {
      auto v = ParseInt(name, value, 0, INT32_MAX);
      if (!v.ok()) return v.status();
      f.sampling.top_k = static_cast<int32_t>(*v);
    } else if (name == "--top-p") {
      auto v = ParseDouble(name, value);
      if (!v.ok()) return v.status();
      f.sampling.top_p = static_cast<float>(*v);
    } else if (name == "--seed") {
      uint64_t s;
      if (!absl::SimpleAtoi(value, &s)) return BadFlag(name, value, "an unsigned integer");
      f.sampling.seed = s;
    } else if (name == "--stop-tokens") {
      f.stop_tokens = value;
    } else if (name == "--cuda-graphs") {
      auto m = sqa::ParseStepGraphMode(value);
      if (!m.ok()) return m.status();
      f.cuda_graphs = *m;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", name));
    }
  }
  if (f.model.empty()) return absl::InvalidArgumentError("--model is required");
  if (f.prompts.empty()) {
    return absl::InvalidArgumentError("give at least one of --prompt-tokens, --prompt-file, --synthetic-prompt");
  }
  absl::Status st = sqa::ValidateSamplingParams(f.sampling);
  if (!st.ok()) return st;
  return f;
}

absl::StatusOr<std::vector<int32_t>> MakePrompt(const PromptSpec& p, size_t index, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> ids;
  if (p.kind == PromptSpec::kTokens) {
    auto r = ParseIds("--prompt-tokens", p.value);
    if (!r.ok()) return r.status();
    ids = *std::move(r);
  } else if (p.kind == PromptSpec::kFile) {
    std::ifstream in(p.value);
    if (!in) return absl::InvalidArgumentError(absl::StrCat("--prompt-file: cannot read ", p.value));
    std::stringstream ss;
    ss << in.rdbuf();
    auto r = ParseIds(absl::StrCat("--prompt-file ", p.value), ss.str());
    if (!r.ok()) return r.status();
    ids = *std::move(r);
  } else {
    auto n = ParseInt("--synthetic-prompt", p.value, 1, int64_t{1} << 30);
    if (!n.ok()) return n.status();
    ids.resize(static_cast<size_t>(*n));
    for (int64_t j = 0; j < *n; ++j) {
      const int64_t t = static_cast<int64_t>(sqa::UniformFromSeed(seed + index, static_cast<uint64_t>(j)) *
                                             static_cast<double>(vocab));
      ids[static_cast<size_t>(j)] = static_cast<int32_t>(std::min(t, vocab - 1));
    }
  }
  if (ids.empty()) return absl::InvalidArgumentError(absl::StrCat("prompt ", index, " is empty"));
  for (int32_t t : ids) {
    if (t >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt ", index, ": token id ", t, " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  return ids;
}

std::string OutPath(const std::string& path, size_t i, size_t batch) {
  if (batch == 1) return path;
  const size_t slash = path.find_last_of('/');
  const size_t dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return absl::StrCat(path, ".", i);
  return absl::StrCat(path.substr(0, dot), ".", i, path.substr(dot));
}

struct SeqRun {
  sqa::SeqId id = 0;
  std::vector<int32_t> prompt;
  std::vector<int32_t> generated;
  std::vector<float> decode_logits;
  bool done = false;
  std::string finish_reason = "length";
};

int Fail(int code, const absl::Status& st) {
  std::cerr << "sqa-run: " << st.message() << "\n";
  if (code == 2) std::cerr << "(sqa-run --help for usage)\n";
  return code;
}

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

int Run(int argc, char** argv) {
  auto flags_or = ParseFlags(argc, argv);
  if (!flags_or.ok()) return Fail(2, flags_or.status());
  const Flags& f = *flags_or;
  auto stop_or = ParseIds("--stop-tokens", f.stop_tokens);
  if (!stop_or.ok()) return Fail(2, stop_or.status());
  const std::set<int32_t> stop(stop_or->begin(), stop_or->end());
  auto kind = sqa::ParseDeviceKind(f.device);
  if (!kind.ok()) return Fail(2, kind.status());

  auto model_or = sqa::Model::Load(f.model);
  if (!model_or.ok()) return Fail(2, model_or.status());
  std::shared_ptr<const sqa::Model> model = std::move(model_or).value();
  const sqa::ModelConfig& cfg = model->config();

  std::vector<SeqRun> seqs(f.prompts.size());
  int64_t prompt_tokens = 0;
  for (size_t i = 0; i < f.prompts.size(); ++i) {
    auto p = MakePrompt(f.prompts[i], i, cfg.vocab_size, f.sampling.seed);
    if (!p.ok()) return Fail(2, p.status());
    seqs[i].prompt = *std::move(p);
    prompt_tokens += static_cast<int64_t>(seqs[i].prompt.size());
    const int64_t total = static_cast<int64_t>(seqs[i].prompt.size()) + f.generate;
    if (cfg.max_position_embeddings > 0 && total > cfg.max_position_embeddings) {
      return Fail(2, absl::InvalidArgumentError(absl::StrCat(
                         "sequence ", i, " needs ", total, " positions (prompt + --generate); the model accepts at most ",
                         cfg.max_position_embeddings)));
    }
  }

  sqa::BackendOptions bopt;
  bopt.device = *kind;
  bopt.num_threads = static_cast<int>(f.threads);
  auto backend = sqa::CreateBackend(bopt);
  if (!backend.ok()) return Fail(backend.status().code() == absl::StatusCode::kFailedPrecondition ? 2 : 1, backend.status());

  sqa::EngineOptions eopt;
  eopt.block_size = f.block_size;
  eopt.max_chunk_tokens = f.chunk_tokens;
  eopt.cuda_graphs = f.cuda_graphs;
  if (f.kv_cache_mb > 0) {
    eopt.kv_cache_bytes = f.kv_cache_mb << 20;
  } else {
    int64_t blocks = 0;
    for (const SeqRun& s : seqs) {
      blocks += (static_cast<int64_t>(s.prompt.size()) + f.generate + f.block_size - 1) / f.block_size;
    }
    eopt.num_kv_blocks = blocks;
  }
  auto engine_or = sqa::Engine::Create(model, *std::move(backend), eopt);
  if (!engine_or.ok()) return Fail(2, engine_or.status());
  sqa::Engine& engine = **engine_or;
  const int64_t vocab = cfg.vocab_size;
  const size_t batch = seqs.size();

  using Clock = std::chrono::steady_clock;
  const auto t_start = Clock::now();
  double prefill_s = 0, ttft_s = -1;
  for (size_t i = 0; i < batch; ++i) {
    SeqRun& s = seqs[i];
    s.id = engine.NewSequence();
    const auto t0 = Clock::now();
    auto logits = engine.Prefill(s.id, s.prompt, !f.logits_out.empty());
    if (!logits.ok()) {
      return Fail(logits.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1, logits.status());
    }
    prefill_s += Seconds(t0, Clock::now());
    if (!f.logits_out.empty()) {
      absl::Status st = sqa::WriteNpyF32(OutPath(f.logits_out, i, batch), logits->data.data(),
                                         {static_cast<int64_t>(s.prompt.size()), vocab});
      if (!st.ok()) return Fail(1, st);
    }
    if (f.generate > 0) {
      const float* last = logits->row(logits->rows() - 1);
      const sqa::SampledToken tok = sqa::SampleToken(last, vocab, f.sampling, 0);
      s.generated.push_back(tok.token);
      if (ttft_s < 0) ttft_s = Seconds(t_start, Clock::now());
      if (stop.count(tok.token)) {
        s.done = true;
        s.finish_reason = "stop";
      } else if (static_cast<int64_t>(s.generated.size()) >= f.generate) {
        s.done = true;
      }
    } else {
      s.done = true;
    }
  }

  // Decode: all unfinished sequences together, one batched Forward per step.
  const auto t_decode = Clock::now();
  int64_t decode_tokens = 0;
  std::vector<sqa::Engine::Segment> segs;
  std::vector<size_t> who;
  std::vector<int32_t> feed(batch);
  for (;;) {
    segs.clear();
    who.clear();
    for (size_t i = 0; i < batch; ++i) {
      if (seqs[i].done) continue;
      feed[i] = seqs[i].generated.back();
      sqa::Engine::Segment seg;
      seg.seq = seqs[i].id;
      seg.tokens = absl::MakeConstSpan(&feed[i], 1);
      seg.sample = &f.sampling;
      seg.sample_step = static_cast<uint64_t>(seqs[i].generated.size());
      seg.sample_logits = !f.decode_logits_out.empty();
      segs.push_back(seg);
      who.push_back(i);
    }
    if (segs.empty()) break;
    auto logits = engine.Forward(segs);
    if (!logits.ok()) return Fail(1, logits.status());
    for (size_t k = 0; k < who.size(); ++k) {
      SeqRun& s = seqs[who[k]];
      if (!f.decode_logits_out.empty()) {
        const float* row = logits->row(logits->row_begin[k]);
        s.decode_logits.insert(s.decode_logits.end(), row, row + vocab);
      }
      const sqa::SampledToken tok = logits->sampled[k];
      s.generated.push_back(tok.token);
      ++decode_tokens;
      if (stop.count(tok.token)) {
        s.done = true;
        s.finish_reason = "stop";
      } else if (static_cast<int64_t>(s.generated.size()) >= f.generate) {
        s.done = true;
      }
    }
  }
  const double decode_s = Seconds(t_decode, Clock::now());

  for (size_t i = 0; i < batch; ++i) {
    if (!f.decode_logits_out.empty() && f.generate > 0) {
      const int64_t rows = static_cast<int64_t>(seqs[i].decode_logits.size()) / vocab;
      absl::Status st =
          sqa::WriteNpyF32(OutPath(f.decode_logits_out, i, batch), seqs[i].decode_logits.data(), {rows, vocab});
      if (!st.ok()) return Fail(1, st);
    }
  }
  if (!f.tokens_out.empty()) {
    std::ofstream out(f.tokens_out);
    if (!out) return Fail(1, absl::InvalidArgumentError(absl::StrCat("cannot write ", f.tokens_out)));
    out << "{\"sequences\":[";
    for (size_t i = 0; i < batch; ++i) {
      std::string ids;
      for (size_t j = 0; j < seqs[i].generated.size(); ++j) absl::StrAppend(&ids, j ? "," : "", seqs[i].generated[j]);
      out << (i ? "," : "") << "{\"prompt_tokens\":" << seqs[i].prompt.size() << ",\"generated\":[" << ids
          << "],\"tokens\":[" << ids << "],\"finish_reason\":\"" << seqs[i].finish_reason << "\"}";
    }
    out << "]}\n";
    if (!out.good()) return Fail(1, absl::DataLossError(absl::StrCat("writing ", f.tokens_out, " failed")));
  }

  std::fprintf(stderr,
               "sqa-run: %s %s on %s, %zu sequence(s)\n"
               "  prompt tokens     %lld\n"
               "  prefill           %.3f s, %.1f tokens/s\n",
               cfg.LayoutName().c_str(), f.model.c_str(), engine.backend().name().c_str(), batch,
               static_cast<long long>(prompt_tokens), prefill_s,
               prefill_s > 0 ? static_cast<double>(prompt_tokens) / prefill_s : 0.0);
  if (ttft_s >= 0) std::fprintf(stderr, "  time to first token %.3f s\n", ttft_s);
  if (decode_tokens > 0) {
    std::fprintf(stderr, "  decode            %lld tokens in %.3f s, %.1f tokens/s\n",
                 static_cast<long long>(decode_tokens), decode_s, static_cast<double>(decode_tokens) / decode_s);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
