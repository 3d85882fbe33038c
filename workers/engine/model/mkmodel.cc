#include "workers/engine/model/mkmodel.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/match.h"
#include "nlohmann/json.hpp"
#include "services/common/status.h"
#include "workers/engine/model/model.h"
#include "workers/engine/model/safetensors.h"

namespace sqa {
namespace {

inline uint64_t Mix64(uint64_t z) {  // splitmix64's finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// Uniform in [-1, 1]: element `i` of the stream `seed` (a counter-based generator, so any element
// can be computed independently and in parallel).
inline float Uniform(uint64_t seed, uint64_t i) {
  const uint64_t r = Mix64(seed + (i + 1) * 0x9e3779b97f4a7c15ull);
  return static_cast<float>(static_cast<int32_t>(static_cast<uint32_t>(r >> 32))) * (1.0f / 2147483648.0f);
}

// value = center + half_width * Uniform(seed, i). A uniform of half-width a has std a/sqrt(3).
struct Init {
  float center = 0;
  float half_width = 0;
  uint64_t seed = 0;
};

Init InitFor(uint64_t seed, const std::string& name, const ModelConfig& c) {
  const double sqrt3 = std::sqrt(3.0);
  const double d = static_cast<double>(c.hidden_size);
  const double residual_scale = 1.0 / std::sqrt(2.0 * static_cast<double>(c.num_hidden_layers));
  Init init;
  init.seed = Mix64(seed ^ Mix64(Fnv1a(name)));
  double center = 0, std_dev = 0;
  if (name == "model.embed_tokens.weight" || name == "lm_head.weight") {
    std_dev = 1.0;
  } else if (name == "model.norm.weight") {
    center = 2.0 / std::sqrt(d);
    std_dev = center * 0.05 / sqrt3;
  } else if (absl::EndsWith(name, "layernorm.weight")) {
    center = 1.0;
    std_dev = 0.05 / sqrt3;
  } else if (absl::EndsWith(name, "o_proj.weight")) {
    std_dev = residual_scale / std::sqrt(static_cast<double>(c.o_in_dim()));
  } else if (absl::EndsWith(name, "down_proj.weight")) {
    std_dev = residual_scale / std::sqrt(static_cast<double>(c.intermediate_size));
  } else if (absl::EndsWith(name, "q_proj.weight")) {
    // Twice the k scale: scores q.k/sqrt(d_head) ~ N(0, 4), so attention is peaked enough that
    // its output (and any error in it) shows in the logits instead of averaging away.
    std_dev = 2.0 / std::sqrt(d);
  } else {  // k, v, gate, up: read the RMS-normalized residual stream
    std_dev = 1.0 / std::sqrt(d);
  }
  init.center = static_cast<float>(center);
  init.half_width = static_cast<float>(std_dev * sqrt3);
  return init;
}

absl::Status ErrnoError(absl::string_view what, absl::string_view path, int err) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(err)));
}

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create", tmp, errno);
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t w = ::write(fd, text.data() + done, text.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return ErrnoError("cannot write", tmp, err);
    }
    done += static_cast<size_t>(w);
  }
  if (::close(fd) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoError("cannot write", path, err);
  }
  return absl::OkStatus();
}

// Generates the given tensors into one safetensors file with `threads` workers. Each worker
// fills a chunk in f32, converts it to the output dtype and pwrite()s it, so a full disk is an
// error rather than a SIGBUS.
absl::Status WriteShard(const std::string& path, const std::vector<ExpectedTensor>& tensors, const MkModelOptions& o,
                        int threads) {
  std::vector<TensorToWrite> tw;
  for (const ExpectedTensor& e : tensors) tw.push_back({e.name, o.dtype, e.shape, nullptr});
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"generator", "sqa-mkmodel"}, {"seed", std::to_string(o.seed)}};
  SQA_ASSIGN_OR_RETURN(SafetensorsLayout layout, PlanSafetensors(tw, metadata));

  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create", tmp, errno);
  auto fail = [&](absl::Status st) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return st;
  };
  // Reserve the space up front so a full disk fails fast (not every file system supports it).
  if (int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(layout.file_size)); rc != 0 && rc != EOPNOTSUPP && rc != EINVAL) {
    return fail(ErrnoError("cannot allocate space for", tmp, rc));
  }
  if (::pwrite(fd, layout.prefix.data(), layout.prefix.size(), 0) != static_cast<ssize_t>(layout.prefix.size())) {
    return fail(ErrnoError("cannot write", tmp, errno));
  }

  constexpr uint64_t kChunk = 1u << 18;  // elements per task
  struct Task {
    size_t tensor;
    uint64_t begin, count;
  };
  std::vector<Task> tasks;
  std::vector<Init> inits;
  for (size_t t = 0; t < tensors.size(); ++t) {
    inits.push_back(InitFor(o.seed, tensors[t].name, o.config));
    uint64_t numel = 1;
    for (int64_t dim : tensors[t].shape) numel *= static_cast<uint64_t>(dim);
    for (uint64_t b = 0; b < numel; b += kChunk) tasks.push_back({t, b, std::min(kChunk, numel - b)});
  }
  const size_t esize = DTypeSize(o.dtype);
  std::atomic<size_t> next{0};
  std::mutex mu;
  absl::Status error;
  auto worker = [&] {
    std::vector<float> f32(kChunk);
    std::vector<uint8_t> bytes(kChunk * esize);
    for (size_t k = next++; k < tasks.size(); k = next++) {
      const Task& task = tasks[k];
      const Init& init = inits[task.tensor];
      for (uint64_t j = 0; j < task.count; ++j) f32[j] = init.center + init.half_width * Uniform(init.seed, task.begin + j);
      ConvertFromF32(f32.data(), task.count, o.dtype, bytes.data());
      const uint64_t off = layout.offsets[task.tensor] + task.begin * esize;
      size_t done = 0;
      const size_t len = task.count * esize;
      while (done < len) {
        const ssize_t w = ::pwrite(fd, bytes.data() + done, len - done, static_cast<off_t>(off + done));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
          std::lock_guard<std::mutex> lock(mu);
          if (error.ok()) error = ErrnoError("cannot write", tmp, w < 0 ? errno : ENOSPC);
          next = tasks.size();
          return;
        }
        done += static_cast<size_t>(w);
      }
    }
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
  if (!error.ok()) return fail(error);
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoError("cannot close", tmp, err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoError("cannot rename to", path, err);
  }
  return absl::OkStatus();
}

std::string TorchDtype(DType t) {
  switch (t) {
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
    default:
      return "float32";
  }
}

}  // namespace

float RandomWeight(uint64_t seed, const std::string& name, const ModelConfig& config, uint64_t index) {
  const Init init = InitFor(seed, name, config);
  return init.center + init.half_width * Uniform(init.seed, index);
}

absl::Status ApplyLayout(std::string_view layout, ModelConfig* c) {
  const int64_t h = c->num_attention_heads;
  struct L {
    const char* name;
    int64_t q_num, q_den, kv_num, kv_den;  // Hq = H*q_num/q_den; Hkv = H*kv_num/kv_den, or 1 if kv_den == 0
  };
  static constexpr L kLayouts[] = {{"MHA", 1, 1, 1, 1},  {"GQA", 1, 1, 1, 4},  {"MQA", 1, 1, 0, 0},
                                   {"SQA", 1, 2, 1, 4},  {"sSQA", 1, 2, 1, 2}, {"xSQA", 1, 4, 1, 4},
                                   {"xSMQA", 1, 4, 0, 0}, {"rSQA", 1, 4, 1, 2}};
  for (const L& l : kLayouts) {
    if (layout != l.name) continue;
    const int64_t den = std::max(l.q_den, l.kv_den);
    if (h <= 0 || h % den != 0) {
      return absl::InvalidArgumentError(absl::StrCat("layout ", std::string(layout), " needs num_attention_heads divisible by ",
                                                     den, " (got ", h, ")"));
    }
    c->num_query_heads = h * l.q_num / l.q_den;
    c->num_key_value_heads = l.kv_den == 0 ? 1 : h * l.kv_num / l.kv_den;
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown layout \"", std::string(layout), "\" (known: MHA, GQA, MQA, SQA, sSQA, xSQA, xSMQA, rSQA)"));
}

absl::StatusOr<ModelConfig> PresetConfig(std::string_view size, std::string_view layout) {
  ModelConfig c;
  struct P {
    const char* name;
    int64_t d, layers, heads, head_dim, mlp, vocab, max_pos;
    double theta;
  };
  static constexpr P kPresets[] = {
      {"tiny", 64, 2, 8, 8, 128, 256, 4096, 10000.0},
      {"small", 256, 4, 8, 32, 688, 1024, 262144, 10000.0},
      {"medium", 512, 4, 8, 64, 1376, 4096, 262144, 500000.0},
      {"1b", 2048, 16, 16, 128, 5632, 32000, 1048576, 500000.0},
  };
  const P* p = nullptr;
  for (const P& q : kPresets)
    if (size == q.name) p = &q;
  if (p == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown preset \"", std::string(size), "\" (known: tiny, small, medium, 1b)"));
  }
  c.hidden_size = p->d;
  c.num_hidden_layers = p->layers;
  c.num_attention_heads = p->heads;
  c.head_dim = p->head_dim;
  c.intermediate_size = p->mlp;
  c.vocab_size = p->vocab;
  c.max_position_embeddings = p->max_pos;
  c.rope_theta = p->theta;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = false;
  SQA_RETURN_IF_ERROR(ApplyLayout(layout, &c));
  return c;
}

absl::Status WriteRandomModel(const MkModelOptions& o, const std::string& dir) {
  if (o.dtype != DType::kF32 && o.dtype != DType::kBF16 && o.dtype != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("dtype ", std::string(DTypeName(o.dtype)), " is not a weight dtype (F32, BF16, F16)"));
  }
  ModelConfig config = o.config;
  config.torch_dtype = TorchDtype(o.dtype);
  SQA_RETURN_IF_ERROR(ValidateModelConfig(config, "model config"));
  MkModelOptions opts = o;
  opts.config = config;

  const std::vector<ExpectedTensor> tensors = ExpectedTensors(config);
  if (o.shards < 1 || static_cast<size_t>(o.shards) > tensors.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("shards=", o.shards, " must be between 1 and the number of tensors (", tensors.size(), ")"));
  }
  int threads = o.threads > 0 ? o.threads : static_cast<int>(std::thread::hardware_concurrency());
  threads = std::max(1, std::min(threads, 64));

  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create directory ", dir, ": ", ec.message()));
  SQA_RETURN_IF_ERROR(WriteTextFile(dir + "/config.json", config.ToJson()));

  const std::string index_path = dir + "/model.safetensors.index.json";
  const std::string single_path = dir + "/model.safetensors";
  if (o.shards == 1) {
    std::filesystem::remove(index_path, ec);
    return WriteShard(single_path, tensors, opts, threads);
  }
  std::filesystem::remove(single_path, ec);

  // Contiguous groups of roughly equal bytes, none empty.
  std::vector<uint64_t> bytes;
  uint64_t total = 0;
  for (const ExpectedTensor& e : tensors) {
    uint64_t n = DTypeSize(o.dtype);
    for (int64_t dim : e.shape) n *= static_cast<uint64_t>(dim);
    bytes.push_back(n);
    total += n;
  }
  const size_t k = static_cast<size_t>(o.shards);
  std::vector<std::vector<ExpectedTensor>> groups(k);
  size_t shard = 0;
  uint64_t before = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (i > 0 && shard + 1 < k) {
      const size_t wanted = static_cast<size_t>(static_cast<long double>(before) * k / std::max<uint64_t>(total, 1));
      const bool must_advance = tensors.size() - i == k - 1 - shard;  // one tensor left per remaining shard
      if ((wanted > shard && !groups[shard].empty()) || must_advance) ++shard;
    }
    groups[shard].push_back(tensors[i]);
    before += bytes[i];
  }
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total}};
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t s = 0; s < k; ++s) {
    const std::string file = absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, k);
    SQA_RETURN_IF_ERROR(WriteShard(dir + "/" + file, groups[s], opts, threads));
    for (const ExpectedTensor& e : groups[s]) weight_map[e.name] = file;
  }
  index["weight_map"] = std::move(weight_map);
  return WriteTextFile(index_path, index.dump(2) + "\n");
}

}  // namespace sqa
