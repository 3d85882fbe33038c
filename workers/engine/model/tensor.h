// Element types and non-owning tensor views shared by the model loader and the backends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sqa {

enum class DType : uint8_t { kF32, kBF16, kF16, kI32 };

size_t DTypeSize(DType t);
std::string_view DTypeName(DType t);  // "F32", "BF16", "F16", "I32" (safetensors spelling)

// bf16/f16 <-> f32 conversions (round-to-nearest-even for f32 -> bf16).
float Bf16ToF32(uint16_t v);
uint16_t F32ToBf16(float v);
float F16ToF32(uint16_t v);
uint16_t F32ToF16(float v);
// Converts `n` elements of `src` (of type `src_type`) into f32 `dst`.
void ConvertToF32(const void* src, DType src_type, size_t n, float* dst);
// Converts `n` f32 values into `dst_type` (F32, BF16 or F16; round-to-nearest-even). I32 truncates.
void ConvertFromF32(const float* src, size_t n, DType dst_type, void* dst);

// Where a tensor's bytes live. kDevice means the memory of the backend that made it (GPU memory
// for CUDA; for the CPU backend, ordinary host memory owned by the backend).
enum class MemSpace : uint8_t { kHost, kDevice };

// A non-owning view of a dense row-major tensor. Ownership stays with whoever allocated `data`
// (a mapped file, a backend buffer). Copyable; never frees.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  MemSpace space = MemSpace::kHost;
  std::vector<int64_t> shape;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype); }
  int64_t dim(int i) const { return shape[static_cast<size_t>(i < 0 ? i + shape.size() : i)]; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }
};

std::string ShapeString(const std::vector<int64_t>& shape);  // "[4096, 2048]"

}  // namespace sqa
