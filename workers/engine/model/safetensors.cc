#include "workers/engine/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "services/common/status.h"
#include "workers/engine/model/json_util.h"

namespace sqa {
namespace {

using Json = nlohmann::json;

// The reference implementation refuses headers above 100 MB; a real one is a few hundred KB.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

absl::Status Err(absl::string_view file, absl::string_view msg) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", msg));
}

absl::Status ErrnoError(absl::string_view what, absl::string_view path, int err) {
  const std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

std::optional<DType> DTypeFromName(std::string_view s) {
  if (s == "F32") return DType::kF32;
  if (s == "BF16") return DType::kBF16;
  if (s == "F16") return DType::kF16;
  if (s == "I32") return DType::kI32;
  return std::nullopt;
}

// Reads a non-negative JSON integer (nlohmann keeps values >= 2^63 as unsigned).
bool GetU64(const Json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    *out = static_cast<uint64_t>(v);
    return true;
  }
  return false;
}

}  // namespace

// ---- MappedFile ---------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError("cannot stat", path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  std::unique_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return ErrnoError("cannot mmap", path, err);
    }
    f->data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file alive
  return f;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

// ---- SafetensorsFile ----------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  SQA_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mapping, MappedFile::Open(path));
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->mapping_ = std::move(mapping);
  SQA_RETURN_IF_ERROR(f->ParseImage(f->mapping_->data(), f->mapping_->size()));
  return f;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(
    std::shared_ptr<const std::vector<uint8_t>> bytes, const std::string& name) {
  if (bytes == nullptr) return absl::InvalidArgumentError(absl::StrCat(name, ": no data"));
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = name;
  f->owned_ = std::move(bytes);
  SQA_RETURN_IF_ERROR(f->ParseImage(f->owned_->data(), f->owned_->size()));
  return f;
}

absl::Status SafetensorsFile::ParseImage(const uint8_t* data, size_t size) {
  const std::string& file = path_;
  if (size < 8) {
    return Err(file, absl::StrCat("file is ", size, " bytes; a safetensors file starts with an 8-byte header length"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];  // little-endian on every host
  if (n > size - 8) return Err(file, absl::StrCat("header length ", n, " past end of file (size ", size, ")"));
  if (n > kMaxHeaderBytes) {
    return Err(file, absl::StrCat("header length ", n, " is larger than the ", kMaxHeaderBytes, "-byte limit"));
  }
  const std::string_view text(reinterpret_cast<const char*>(data + 8), static_cast<size_t>(n));
  SQA_ASSIGN_OR_RETURN(Json root, json_util::Parse(text, absl::StrCat(file, ": header")));
  if (!root.is_object()) {
    return Err(file, absl::StrCat("header must be a JSON object, got ", json_util::TypeName(root)));
  }
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = size - data_start;

  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  std::map<std::string, TensorView> tensors;
  std::map<std::string, std::string> metadata;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    const Json& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object()) {
        return Err(file, absl::StrCat("\"__metadata__\" must be an object of strings, got ", json_util::TypeName(e)));
      }
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (!m.value().is_string()) {
          return Err(file, absl::StrCat("\"__metadata__\" value for \"", m.key(), "\" must be a string, got ",
                                        json_util::TypeName(m.value())));
        }
        metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string t = absl::StrCat("tensor \"", name, "\"");
    if (name.empty()) return Err(file, "a tensor has an empty name");
    if (!e.is_object()) return Err(file, absl::StrCat(t, ": entry must be an object, got ", json_util::TypeName(e)));

    auto dt = e.find("dtype");
    if (dt == e.end() || !dt->is_string()) return Err(file, absl::StrCat(t, ": \"dtype\" missing or not a string"));
    const std::string dtype_name = dt->get<std::string>();
    std::optional<DType> dtype = DTypeFromName(dtype_name);
    if (!dtype) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": ", t, " has dtype \"", dtype_name,
                                                     "\", which is not supported (supported: F32, BF16, F16, I32)"));
    }

    auto sh = e.find("shape");
    if (sh == e.end() || !sh->is_array()) return Err(file, absl::StrCat(t, ": \"shape\" missing or not an array"));
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    bool overflow = false;
    for (const Json& d : *sh) {
      uint64_t v;
      if (!GetU64(d, &v) || v > static_cast<uint64_t>(INT64_MAX)) {
        return Err(file, absl::StrCat(t, ": shape ", json_util::Brief(*sh), " must hold non-negative integers"));
      }
      shape.push_back(static_cast<int64_t>(v));
      overflow |= __builtin_mul_overflow(numel, v, &numel);
    }
    uint64_t nbytes = 0;
    overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(DTypeSize(*dtype)), &nbytes);
    if (overflow || numel > static_cast<uint64_t>(INT64_MAX)) {
      return Err(file, absl::StrCat(t, ": shape ", json_util::Brief(*sh), " has too many elements"));
    }

    auto off = e.find("data_offsets");
    uint64_t begin = 0, end = 0;
    if (off == e.end() || !off->is_array() || off->size() != 2 || !GetU64((*off)[0], &begin) ||
        !GetU64((*off)[1], &end)) {
      return Err(file, absl::StrCat(t, ": \"data_offsets\" must be [begin, end] with non-negative integers"));
    }
    const std::string offs = absl::StrCat("data_offsets [", begin, ", ", end, "]");
    if (begin > end) return Err(file, absl::StrCat(t, ": ", offs, " has begin after end"));
    if (end > data_size) {
      return Err(file, absl::StrCat(t, ": ", offs, " extend past the end of the data section (", data_size,
                                    " bytes after the header); the file is truncated or the offsets are wrong"));
    }
    if (end - begin != nbytes) {
      return Err(file, absl::StrCat(t, " (", dtype_name, " ", ShapeString(shape), ") needs ", nbytes,
                                    " bytes but its ", offs, " span ", end - begin));
    }
    // Backends read the mapping as typed arrays; a misaligned tensor would be undefined behavior.
    if ((data_start + begin) % DTypeSize(*dtype) != 0) {
      return Err(file, absl::StrCat(t, " starts at file offset ", data_start + begin,
                                    ", which is not a multiple of its element size ", DTypeSize(*dtype)));
    }
    TensorView v;
    v.data = const_cast<uint8_t*>(data + data_start + begin);
    v.dtype = *dtype;
    v.space = MemSpace::kHost;
    v.shape = std::move(shape);
    auto [pos, inserted] = tensors.emplace(name, std::move(v));
    (void)inserted;  // duplicate keys are rejected by the JSON reader
    if (begin != end) ranges.push_back({begin, end, &pos->first});
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return Err(file, absl::StrCat("tensors \"", *ranges[i - 1].name, "\" [", ranges[i - 1].begin, ", ",
                                    ranges[i - 1].end, ") and \"", *ranges[i].name, "\" [", ranges[i].begin, ", ",
                                    ranges[i].end, ") overlap"));
    }
  }
  tensors_ = std::move(tensors);
  metadata_ = std::move(metadata);
  return absl::OkStatus();
}

// ---- writing ------------------------------------------------------------------------------------

absl::StatusOr<SafetensorsLayout> PlanSafetensors(const std::vector<TensorToWrite>& tensors,
                                                  const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) {
      if (json_util::FindInvalidUtf8(k) || json_util::FindInvalidUtf8(v)) {
        return absl::InvalidArgumentError(absl::StrCat("metadata entry \"", k, "\" is not valid UTF-8"));
      }
      m[k] = v;
    }
    header["__metadata__"] = std::move(m);
  }
  std::set<std::string> names;
  std::vector<uint64_t> rel;
  uint64_t pos = 0;
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") {
      return absl::InvalidArgumentError(absl::StrCat("invalid tensor name \"", t.name, "\""));
    }
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", t.name, "\" is listed twice"));
    }
    if (json_util::FindInvalidUtf8(t.name)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor name \"", t.name, "\" is not valid UTF-8"));
    }
    uint64_t numel = 1;
    bool overflow = false;
    for (int64_t d : t.shape) {
      if (d < 0) {
        return absl::InvalidArgumentError(absl::StrCat("tensor \"", t.name, "\" has negative shape ", ShapeString(t.shape)));
      }
      overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel);
    }
    uint64_t nbytes = 0, end = 0;
    overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(DTypeSize(t.dtype)), &nbytes);
    overflow |= __builtin_add_overflow(pos, nbytes, &end);
    if (overflow) return absl::InvalidArgumentError(absl::StrCat("tensor \"", t.name, "\" is too large"));
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))}, {"shape", t.shape}, {"data_offsets", {pos, end}}};
    rel.push_back(pos);
    pos = end;
  }
  std::string json = header.dump();
  // Pad with spaces so the data section starts 8-aligned (the format's convention). Tensors are
  // laid out back to back, so each stays aligned when the sizes before it allow (checked below).
  json.append((8 - json.size() % 8) % 8, ' ');
  SafetensorsLayout layout;
  layout.prefix.resize(8);
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) layout.prefix[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  layout.prefix += json;
  for (uint64_t r : rel) layout.offsets.push_back(layout.prefix.size() + r);
  layout.file_size = layout.prefix.size() + pos;
  // Tensors of mixed element sizes could leave a later one misaligned; the loader rejects that.
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (layout.offsets[i] % DTypeSize(tensors[i].dtype) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor \"", tensors[i].name, "\" would start at offset ", layout.offsets[i],
          ", not aligned to its element size; order tensors by decreasing element size"));
    }
  }
  return layout;
}

namespace {
absl::Status WriteAll(int fd, const void* p, size_t n, const std::string& path) {
  const auto* b = static_cast<const uint8_t*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, b, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", path, errno);
    }
    b += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  SQA_ASSIGN_OR_RETURN(SafetensorsLayout layout, PlanSafetensors(tensors, metadata));
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t end = i + 1 < tensors.size() ? layout.offsets[i + 1] : layout.file_size;
    if (end > layout.offsets[i] && tensors[i].data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", tensors[i].name, "\" has no data"));
    }
  }
  // Write to a temporary name and rename, so a crash never leaves a half-written model file.
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create", tmp, errno);
  absl::Status st = WriteAll(fd, layout.prefix.data(), layout.prefix.size(), tmp);
  for (size_t i = 0; st.ok() && i < tensors.size(); ++i) {
    const uint64_t end = i + 1 < tensors.size() ? layout.offsets[i + 1] : layout.file_size;
    st = WriteAll(fd, tensors[i].data, end - layout.offsets[i], tmp);
  }
  if (::close(fd) != 0 && st.ok()) st = ErrnoError("cannot close", tmp, errno);
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) st = ErrnoError("cannot rename to", path, errno);
  if (!st.ok()) ::unlink(tmp.c_str());
  return st;
}

}  // namespace sqa
