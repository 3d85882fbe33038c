// Portable 16-lane float vectors (GCC/Clang vector extensions). On AVX-512 machines one v16f is
// one zmm register; elsewhere the compiler splits it, so there is one code path everywhere.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

namespace sqa::cpu {

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
// Unaligned, aliasing-safe load/store types.
typedef float v16f_u __attribute__((vector_size(64), aligned(4), may_alias));

inline v16f Load(const float* p) { return *reinterpret_cast<const v16f_u*>(p); }
inline void Store(float* p, v16f v) { *reinterpret_cast<v16f_u*>(p) = v; }
inline v16f Splat(float x) { return v16f{} + x; }
inline v16i Iota() { return v16i{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}; }

inline float HMax(v16f v) {
  float m = v[0];
  for (int i = 1; i < 16; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
inline float HSum(v16f v) {
  // Pairwise, so that the result does not depend on lane order more than necessary.
  float a[16];
  std::memcpy(a, &v, sizeof(a));
  for (int w = 8; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) a[i] += a[i + w];
  return a[0];
}
inline v16f Max(v16f a, v16f b) { return a > b ? a : b; }

// 2^x, relative error ~2e-7 for x in [-126, 127]; exactly 0 for x < -126 (including -inf).
inline v16f Exp2(v16f x) {
  const v16f lo = Splat(-126.f), hi = Splat(127.f);
  v16f xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const v16f magic = Splat(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  v16f n = (xc + magic) - magic;
  v16f f = xc - n;  // in [-0.5, 0.5]
  // Taylor series of 2^f = e^(f ln 2) to degree 7.
  constexpr float c1 = 0.6931471805599453f, c2 = 0.2402265069591007f, c3 = 0.05550410866482158f,
                  c4 = 0.009618129107628477f, c5 = 0.0013333558146428443f, c6 = 0.00015403530393381608f,
                  c7 = 1.525273380405984e-05f;
  v16f p = Splat(c7);
  p = p * f + c6;
  p = p * f + c5;
  p = p * f + c4;
  p = p * f + c3;
  p = p * f + c2;
  p = p * f + c1;
  p = p * f + 1.f;
  v16i ni = __builtin_convertvector(n, v16i);
  v16i bits = (ni + 127) << 23;
  v16f scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  v16f r = p * scale;
  const v16f zero = Splat(0.f);
  return x < lo ? zero : r;
}

// e^x through Exp2.
inline v16f Exp(v16f x) { return Exp2(x * 1.4426950408889634f); }

}  // namespace sqa::cpu
