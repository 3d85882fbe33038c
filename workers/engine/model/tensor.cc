#include "workers/engine/model/tensor.h"

#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace sqa {

size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
      return 2;
  }
  return 0;
}

std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kI32:
      return "I32";
  }
  return "?";
}

namespace {
inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace

float Bf16ToF32(uint16_t v) { return BitsFloat(static_cast<uint32_t>(v) << 16); }

uint16_t F32ToBf16(float v) {
  uint32_t u = FloatBits(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    // NaN: keep sign and the top payload bits, force the quiet bit so truncation cannot turn it
    // into an infinity.
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  }
  // Round to nearest, ties to even. Finite values past the largest bf16 round up to infinity,
  // which is the correct IEEE result; infinities pass through unchanged (low half is zero).
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    // Zero or subnormal: man * 2^-24 is exact in f32.
    const float f = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -f : f;
  }
  if (exp == 31) return BitsFloat(sign | 0x7f800000u | (man << 13));  // Inf / NaN (payload kept)
  return BitsFloat(sign | ((exp + 112u) << 23) | (man << 13));
}

uint16_t F32ToF16(float v) {
  const uint32_t u = FloatBits(v);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t x = u & 0x7fffffffu;
  if (x >= 0x7f800000u) {  // Inf or NaN
    if (x == 0x7f800000u) return sign | 0x7c00u;
    return static_cast<uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu));  // quiet NaN
  }
  if (x >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds (ties-to-even) to infinity
  if (x < 0x38800000u) {
    // Result is an f16 subnormal (or zero): count units of 2^-24 with round-to-nearest-even.
    if (x <= 0x33000000u) return sign;  // <= 2^-25: rounds to zero (2^-25 ties to even zero)
    const uint32_t e = x >> 23;
    const uint32_t m = (x & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // in [14, 24]
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;  // may carry into the smallest normal
    return static_cast<uint16_t>(sign | r);
  }
  const uint32_t rebias = x - 0x38000000u;  // exponent bias 127 -> 15
  uint32_t r = rebias >> 13;
  const uint32_t rem = rebias & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return static_cast<uint16_t>(sign | r);
}

void ConvertToF32(const void* src, DType src_type, size_t n, float* dst) {
  // Sources may come straight from a file mapping, so reads go through memcpy (no alignment
  // assumption); the compiler turns these loops into vector code.
  if (n == 0) return;  // src/dst may be null for empty tensors
  const auto* p = static_cast<const uint8_t*>(src);
  switch (src_type) {
    case DType::kF32:
      std::memmove(dst, src, n * sizeof(float));
      return;
    case DType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        dst[i] = BitsFloat(static_cast<uint32_t>(v) << 16);
      }
      return;
    case DType::kF16: {
      size_t i = 0;
#if defined(__F16C__)
      for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
      }
#endif
      for (; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        dst[i] = F16ToF32(v);
      }
      return;
    }
    case DType::kI32:
      for (size_t i = 0; i < n; ++i) {
        int32_t v;
        std::memcpy(&v, p + 4 * i, 4);
        dst[i] = static_cast<float>(v);
      }
      return;
  }
}

void ConvertFromF32(const float* src, size_t n, DType dst_type, void* dst) {
  if (n == 0) return;
  auto* p = static_cast<uint8_t*>(dst);
  switch (dst_type) {
    case DType::kF32:
      std::memmove(dst, src, n * sizeof(float));
      return;
    case DType::kBF16:
      // Same rounding as F32ToBf16, written inline so the loop vectorizes.
      for (size_t i = 0; i < n; ++i) {
        uint32_t u = FloatBits(src[i]);
        uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        if ((u & 0x7fffffffu) > 0x7f800000u) r = (u >> 16) | 0x0040u;
        const uint16_t h = static_cast<uint16_t>(r);
        std::memcpy(p + 2 * i, &h, 2);
      }
      return;
    case DType::kF16: {
      size_t i = 0;
#if defined(__F16C__)
      for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 2 * i), h);
      }
#endif
      for (; i < n; ++i) {
        const uint16_t h = F32ToF16(src[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      return;
    }
    case DType::kI32:
      for (size_t i = 0; i < n; ++i) {
        const float f = src[i];
        int32_t v = 0;  // NaN -> 0; out-of-range values saturate (a plain cast would be UB)
        if (f >= 2147483647.0f) {
          v = INT32_MAX;
        } else if (f <= -2147483648.0f) {
          v = INT32_MIN;
        } else if (f == f) {
          v = static_cast<int32_t>(f);
        }
        std::memcpy(p + 4 * i, &v, 4);
      }
      return;
  }
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  s += "]";
  return s;
}

}  // namespace sqa
