// sqa-mkmodel: writes a deterministic random model directory (see workers/engine/model/mkmodel.h).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "absl/strings/numbers.h"
#include "workers/engine/model/mkmodel.h"
#include "workers/engine/model/model.h"

namespace {

constexpr const char* kUsage =
    "usage: sqa-mkmodel --out DIR [--preset tiny|small|medium|1b] "
    "[--layout MHA|GQA|MQA|SQA|sSQA|xSQA|xSMQA|rSQA] [--dtype f32|bf16|f16] [--seed N] [--shards K] "
    "[--tie] [--threads N] [--verify]\n"
    "  overrides: --layers N --hidden N --heads N --query-heads N --kv-heads N --head-dim N\n"
    "             --intermediate N --vocab N --max-pos N --rope-theta X --rope-scaling-factor X\n";

int Usage(const std::string& msg) {
  std::fprintf(stderr, "sqa-mkmodel: %s\n%s", msg.c_str(), kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> v;  // flag -> value
  bool tie = false;
  bool verify = false;  // load the written model back through Model::Load
  static const char* kValued[] = {"--out",     "--preset",     "--layout",      "--dtype",   "--seed",
                                  "--shards",  "--threads",    "--layers",      "--hidden",  "--heads",
                                  "--query-heads", "--kv-heads", "--head-dim",  "--intermediate",
                                  "--vocab",   "--max-pos",    "--rope-theta",  "--rope-scaling-factor"};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (a == "--tie") {
      tie = true;
      continue;
    }
    if (a == "--verify") {
      verify = true;
      continue;
    }
    std::string value;
    bool has_inline = false;
    if (auto eq = a.find('='); eq != std::string::npos && a.rfind("--", 0) == 0) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_inline = true;
    }
    bool known = false;
    for (const char* k : kValued) known |= a == k;
    if (!known) return Usage("unknown flag " + a);
    if (!has_inline) {
      if (i + 1 >= argc) return Usage(a + " needs a value");
      value = argv[++i];
    }
    v[a] = value;
  }
  if (!v.count("--out")) return Usage("--out DIR is required");

  auto get_int = [&](const char* flag, int64_t* out) -> bool {
    auto it = v.find(flag);
    if (it == v.end()) return true;
    if (!absl::SimpleAtoi(it->second, out)) {
      Usage(std::string(flag) + " wants an integer, got \"" + it->second + "\"");
      return false;
    }
    return true;
  };
  auto get_double = [&](const char* flag, double* out) -> bool {
    auto it = v.find(flag);
    if (it == v.end()) return true;
    if (!absl::SimpleAtod(it->second, out)) {
      Usage(std::string(flag) + " wants a number, got \"" + it->second + "\"");
      return false;
    }
    return true;
  };

  const std::string preset = v.count("--preset") ? v["--preset"] : "tiny";
  const std::string layout = v.count("--layout") ? v["--layout"] : "SQA";
  auto base = sqa::PresetConfig(preset, "MHA");
  if (!base.ok()) return Usage(std::string(base.status().message()));
  sqa::MkModelOptions o;
  o.config = *base;
  sqa::ModelConfig& c = o.config;

  const std::string dtype = v.count("--dtype") ? v["--dtype"] : "f32";
  if (dtype == "f32") {
    o.dtype = sqa::DType::kF32;
  } else if (dtype == "bf16") {
    o.dtype = sqa::DType::kBF16;
  } else if (dtype == "f16") {
    o.dtype = sqa::DType::kF16;
  } else {
    return Usage("--dtype must be f32, bf16 or f16, got \"" + dtype + "\"");
  }
  int64_t seed = 0, shards = 1, threads = 0;
  if (!get_int("--seed", &seed) || !get_int("--shards", &shards) || !get_int("--threads", &threads)) return 2;
  if (seed < 0) return Usage("--seed must be >= 0");
  if (shards < 1 || shards > 100000) return Usage("--shards must be >= 1");
  if (threads < 0 || threads > 1024) return Usage("--threads must be in [0, 1024]");
  o.seed = static_cast<uint64_t>(seed);
  o.shards = static_cast<int>(shards);
  o.threads = static_cast<int>(threads);
  c.tie_word_embeddings = tie;

  // Size overrides first; head_dim follows hidden/heads unless given; the layout then derives
  // Hq and Hkv from H, and explicit head counts win over the layout.
  const bool resize_heads = v.count("--hidden") || v.count("--heads");
  if (!get_int("--layers", &c.num_hidden_layers) || !get_int("--hidden", &c.hidden_size) ||
      !get_int("--heads", &c.num_attention_heads) || !get_int("--intermediate", &c.intermediate_size) ||
      !get_int("--vocab", &c.vocab_size) || !get_int("--max-pos", &c.max_position_embeddings)) {
    return 2;
  }
  if (resize_heads && !v.count("--head-dim")) {
    if (c.num_attention_heads <= 0 || c.hidden_size % c.num_attention_heads != 0) {
      return Usage("--hidden must be divisible by --heads (or give --head-dim)");
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (!get_int("--head-dim", &c.head_dim)) return 2;
  if (auto st = sqa::ApplyLayout(layout, &c); !st.ok()) return Usage(std::string(st.message()));
  if (!get_int("--query-heads", &c.num_query_heads) || !get_int("--kv-heads", &c.num_key_value_heads)) return 2;
  if (!get_double("--rope-theta", &c.rope_theta)) return 2;
  if (v.count("--rope-scaling-factor")) {
    if (!get_double("--rope-scaling-factor", &c.rope_scaling.factor)) return 2;
    c.rope_scaling.type = "linear";
  }
  if (auto st = sqa::ValidateModelConfig(c, "flags"); !st.ok()) return Usage(std::string(st.message()));

  const auto t0 = std::chrono::steady_clock::now();
  if (auto st = sqa::WriteRandomModel(o, v["--out"]); !st.ok()) {
    std::fprintf(stderr, "sqa-mkmodel: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int64_t params = 0;
  for (const auto& e : sqa::ExpectedTensors(c)) {
    int64_t n = 1;
    for (int64_t d : e.shape) n *= d;
    params += n;
  }
  std::printf(
      "sqa-mkmodel: wrote %s: preset %s, layout %s (H=%lld Hq=%lld Hkv=%lld head_dim=%lld), %lld layers, d=%lld, "
      "%.3fM params, %s, %d shard(s), seed %llu, %.2f s\n",
      v["--out"].c_str(), preset.c_str(), c.LayoutName().c_str(), (long long)c.num_attention_heads,
      (long long)c.num_query_heads, (long long)c.num_key_value_heads, (long long)c.head_dim,
      (long long)c.num_hidden_layers, (long long)c.hidden_size, params / 1e6, dtype.c_str(), o.shards,
      (unsigned long long)o.seed, secs);
  if (verify) {
    const auto t1 = std::chrono::steady_clock::now();
    auto m = sqa::Model::Load(v["--out"]);
    if (!m.ok()) {
      std::fprintf(stderr, "sqa-mkmodel: written model does not load: %s\n", std::string(m.status().message()).c_str());
      return 1;
    }
    std::printf("sqa-mkmodel: verified: Model::Load took %.3f s\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
  }
  return 0;
}
