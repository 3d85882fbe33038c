// Memory-mapped safetensors files. Every header field is validated before any tensor is exposed:
// header length within the file, valid UTF-8 JSON, known dtypes, shapes matching byte ranges,
// offsets in range and not overlapping. Errors name the file and the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "workers/engine/model/tensor.h"

namespace sqa {

// A read-only mapping of one file. Not copyable; the views it hands out live as long as it does.
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Parses an in-memory image (used by tests and fuzzers); `name` appears in error messages.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(std::shared_ptr<const std::vector<uint8_t>> bytes,
                                                                const std::string& name);
  // Views into the read-only mapping (space kHost, data aligned to the element size). Callers must
  // not write through them.
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  // The optional "__metadata__" string map of the header.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  absl::Status ParseImage(const uint8_t* data, size_t size);
  std::string path_;
  std::map<std::string, std::string> metadata_;
  std::unique_ptr<MappedFile> mapping_;
  std::shared_ptr<const std::vector<uint8_t>> owned_;
  std::map<std::string, TensorView> tensors_;
};

struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // numel * DTypeSize(dtype) bytes
};
// Writes a safetensors file (tensors laid out in the given order, 8-byte aligned header).
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// The layout WriteSafetensors produces, for writers that fill the data themselves (sqa-mkmodel
// generates weights straight into a mapped output file). `data` of the tensors is not read.
struct SafetensorsLayout {
  std::string prefix;             // 8-byte length + JSON header padded with spaces to 8 bytes
  std::vector<uint64_t> offsets;  // file offset of each tensor's data, in input order
  uint64_t file_size = 0;
};
absl::StatusOr<SafetensorsLayout> PlanSafetensors(const std::vector<TensorToWrite>& tensors,
                                                  const std::map<std::string, std::string>& metadata = {});

}  // namespace sqa
