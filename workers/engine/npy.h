// Minimal NumPy .npy (format 1.0) reader and writer for little-endian float32 C-order arrays, used
// by sqa-run, benchmarks and tests to exchange logits with NumPy.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sqa {

// Writes `data` (product of `shape` floats) as a '<f4' array.
absl::Status WriteNpyF32(const std::string& path, const float* data, const std::vector<int64_t>& shape);

struct NpyArrayF32 {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
// Reads a '<f4' C-order array (the format WriteNpyF32 writes).
absl::StatusOr<NpyArrayF32> ReadNpyF32(const std::string& path);

}  // namespace sqa
