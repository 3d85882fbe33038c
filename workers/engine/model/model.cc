#include "workers/engine/model/model.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "services/common/status.h"
#include "workers/engine/model/json_util.h"

namespace sqa {
namespace {

using Json = nlohmann::json;

constexpr size_t kMaxJsonFileBytes = 64u << 20;  // config.json / index: real ones are kilobytes

bool IsRegularFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string msg = absl::StrCat("cannot open ", path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::InternalError(msg);
  }
  std::string out;
  char buf[1 << 16];
  while (true) {
    const ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat("cannot read ", path, ": ", std::strerror(err)));
    }
    if (r == 0) break;
    out.append(buf, static_cast<size_t>(r));
    if (out.size() > kMaxJsonFileBytes) {
      ::close(fd);
      return absl::InvalidArgumentError(absl::StrCat(path, " is larger than ", kMaxJsonFileBytes, " bytes"));
    }
  }
  ::close(fd);
  return out;
}

// Shard names come from an untrusted index: keep them inside the model directory.
bool IsSafeShardName(const std::string& f) {
  if (f.empty() || f[0] == '/') return false;
  size_t start = 0;
  while (start <= f.size()) {
    size_t end = f.find('/', start);
    if (end == std::string::npos) end = f.size();
    const std::string_view part(f.data() + start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  return true;
}

struct Found {
  TensorView view;
  const std::string* file;
};

}  // namespace

std::vector<ExpectedTensor> ExpectedTensors(const ModelConfig& c) {
  const int64_t d = c.hidden_size, dh = c.head_dim, hq = c.num_query_heads, hkv = c.num_key_value_heads;
  const int64_t i_dim = c.intermediate_size, v = c.vocab_size;
  const std::string dd = absl::StrCat("hidden_size=", d);
  const std::string vd = absl::StrCat("vocab_size=", v, ", ", dd);
  const std::string qd = absl::StrCat("num_query_heads=", hq, " x head_dim=", dh, ", ", dd);
  const std::string kvd = absl::StrCat("num_key_value_heads=", hkv, " x head_dim=", dh, ", ", dd);
  const std::string od =
      absl::StrCat(dd, ", max(num_query_heads, num_key_value_heads)=", c.attn_heads(), " x head_dim=", dh);
  const std::string gd = absl::StrCat("intermediate_size=", i_dim, ", ", dd);
  const std::string dn = absl::StrCat(dd, ", intermediate_size=", i_dim);

  std::vector<ExpectedTensor> out;
  out.push_back({"model.embed_tokens.weight", {v, d}, vd});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    out.push_back({p + "input_layernorm.weight", {d}, dd});
    out.push_back({p + "self_attn.q_proj.weight", {c.q_dim(), d}, qd});
    out.push_back({p + "self_attn.k_proj.weight", {c.kv_dim(), d}, kvd});
    out.push_back({p + "self_attn.v_proj.weight", {c.kv_dim(), d}, kvd});
    out.push_back({p + "self_attn.o_proj.weight", {d, c.o_in_dim()}, od});
    out.push_back({p + "post_attention_layernorm.weight", {d}, dd});
    out.push_back({p + "mlp.gate_proj.weight", {i_dim, d}, gd});
    out.push_back({p + "mlp.up_proj.weight", {i_dim, d}, gd});
    out.push_back({p + "mlp.down_proj.weight", {d, i_dim}, dn});
  }
  out.push_back({"model.norm.weight", {d}, dd});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {v, d}, vd});
  return out;
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir) {
  std::unique_ptr<Model> m(new Model());
  m->dir_ = dir;
  while (m->dir_.size() > 1 && m->dir_.back() == '/') m->dir_.pop_back();  // "m/" -> "m" in messages
  if (m->dir_.empty()) m->dir_ = ".";
  const std::string& dir_path = m->dir_;
  const std::string config_path = dir_path + "/config.json";
  if (!IsRegularFile(config_path)) {
    return absl::NotFoundError(absl::StrCat(dir_path, " has no config.json (expected a Hugging Face model directory)"));
  }
  SQA_ASSIGN_OR_RETURN(std::string config_text, ReadSmallFile(config_path));
  SQA_ASSIGN_OR_RETURN(m->config_, ParseModelConfig(config_text, config_path));
  const ModelConfig& cfg = m->config_;

  // name -> view and the file it came from; `source` is what "missing from ..." names.
  std::map<std::string, Found> found;
  std::string source;
  const std::string index_path = dir_path + "/model.safetensors.index.json";
  const std::string single_path = dir_path + "/model.safetensors";
  if (IsRegularFile(index_path)) {
    source = index_path;
    SQA_ASSIGN_OR_RETURN(std::string index_text, ReadSmallFile(index_path));
    SQA_ASSIGN_OR_RETURN(Json index, json_util::Parse(index_text, index_path));
    if (!index.is_object()) return absl::InvalidArgumentError(absl::StrCat(index_path, ": top level must be an object"));
    auto wm = index.find("weight_map");
    if (wm == index.end() || !wm->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": \"weight_map\" missing or not an object"));
    }
    std::map<std::string, std::string> weight_map;
    std::map<std::string, size_t> file_slot;  // shard name -> index in files_
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": weight_map entry for \"", it.key(), "\" must be a file name string"));
      }
      const std::string shard = it.value().get<std::string>();
      if (!IsSafeShardName(shard)) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map entry for \"", it.key(),
                                                       "\" names \"", shard, "\", which is not a file inside ", dir_path));
      }
      weight_map[it.key()] = shard;
      if (file_slot.count(shard)) continue;
      const std::string shard_path = dir_path + "/" + shard;
      if (!IsRegularFile(shard_path)) {
        return absl::NotFoundError(absl::StrCat(index_path, ": weight_map maps \"", it.key(), "\" to ", shard,
                                                ", but ", shard_path, " does not exist or is not a regular file"));
      }
      SQA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(shard_path));
      file_slot[shard] = m->files_.size();
      m->files_.push_back(std::move(f));
    }
    for (const auto& [name, shard] : weight_map) {
      const SafetensorsFile& f = *m->files_[file_slot.at(shard)];
      auto t = f.tensors().find(name);
      if (t == f.tensors().end()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map maps \"", name, "\" to ", shard,
                                                       ", but ", f.path(), " has no tensor of that name"));
      }
      found[name] = Found{t->second, &f.path()};
    }
    for (const auto& [shard, slot] : file_slot) {
      for (const auto& [name, view] : m->files_[slot]->tensors()) {
        auto w = weight_map.find(name);
        if (w == weight_map.end()) {
          return absl::InvalidArgumentError(absl::StrCat(m->files_[slot]->path(), ": tensor \"", name,
                                                         "\" is not listed in ", index_path));
        }
        if (w->second != shard) {
          return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\" appears in ", m->files_[slot]->path(),
                                                         " but ", index_path, " maps it to ", w->second));
        }
      }
    }
  } else if (IsRegularFile(single_path)) {
    source = single_path;
    SQA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(single_path));
    m->files_.push_back(std::move(f));
    for (const auto& [name, view] : m->files_[0]->tensors()) found[name] = Found{view, &m->files_[0]->path()};
  } else {
    return absl::NotFoundError(absl::StrCat(dir_path, " has neither model.safetensors nor model.safetensors.index.json"));
  }

  // Presence and shapes, in a fixed order so the first error reported is deterministic.
  const std::vector<ExpectedTensor> expected = ExpectedTensors(cfg);
  std::set<std::string> expected_names;
  for (const ExpectedTensor& e : expected) {
    expected_names.insert(e.name);
    auto it = found.find(e.name);
    if (it == found.end()) {
      return absl::InvalidArgumentError(absl::StrCat(e.name, " missing from ", source, " (", cfg.num_hidden_layers,
                                                     "-layer ", cfg.LayoutName(), " model per ", config_path, ")"));
    }
    if (it->second.view.shape != e.shape) {
      return absl::InvalidArgumentError(absl::StrCat(*it->second.file, ": ", e.name, " has shape ",
                                                     ShapeString(it->second.view.shape), ", expected ",
                                                     ShapeString(e.shape), " (", e.why, ")"));
    }
  }
  for (const auto& [name, f] : found) {
    if (expected_names.count(name)) continue;
    // Old HF checkpoints store RoPE frequencies; they are recomputed from rope_theta.
    if (absl::EndsWith(name, ".rotary_emb.inv_freq")) continue;
    if (name == "lm_head.weight" && cfg.tie_word_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat(
          *f.file, ": lm_head.weight is unexpected: ", config_path,
          " sets tie_word_embeddings=true, so the output projection reuses model.embed_tokens.weight; "
          "remove the tensor or set tie_word_embeddings to false"));
    }
    return absl::InvalidArgumentError(absl::StrCat(*f.file, ": unexpected tensor \"", name, "\" (not part of a ",
                                                   cfg.num_hidden_layers, "-layer model per ", config_path, ")"));
  }

  // One weight dtype for the whole model.
  const Found& first = found.at(expected.front().name);
  const DType dtype = first.view.dtype;
  if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat(*first.file, ": ", expected.front().name, " has dtype ",
                                                   std::string(DTypeName(dtype)), "; weights must be F32, BF16 or F16"));
  }
  for (const ExpectedTensor& e : expected) {
    const Found& f = found.at(e.name);
    if (f.view.dtype != dtype) {
      return absl::InvalidArgumentError(absl::StrCat(*f.file, ": ", e.name, " is ", std::string(DTypeName(f.view.dtype)), " but ",
                                                     expected.front().name, " is ", std::string(DTypeName(dtype)),
                                                     "; all weights must share one dtype"));
    }
  }
  m->dtype_ = dtype;

  auto get = [&](const std::string& name) { return found.at(name).view; };
  ModelWeights& w = m->weights_;
  w.embed_tokens = get("model.embed_tokens.weight");
  w.layers.resize(static_cast<size_t>(cfg.num_hidden_layers));
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    lw.input_norm = get(p + "input_layernorm.weight");
    lw.q_proj = get(p + "self_attn.q_proj.weight");
    lw.k_proj = get(p + "self_attn.k_proj.weight");
    lw.v_proj = get(p + "self_attn.v_proj.weight");
    lw.o_proj = get(p + "self_attn.o_proj.weight");
    lw.post_norm = get(p + "post_attention_layernorm.weight");
    lw.gate_proj = get(p + "mlp.gate_proj.weight");
    lw.up_proj = get(p + "mlp.up_proj.weight");
    lw.down_proj = get(p + "mlp.down_proj.weight");
  }
  w.final_norm = get("model.norm.weight");
  w.lm_head = cfg.tie_word_embeddings ? w.embed_tokens : get("lm_head.weight");
  return m;
}

}  // namespace sqa
