#include "workers/engine/cpu/small_gemm.h"

#include "workers/engine/cpu/simd.h"

namespace sqa::cpu {
namespace {

// Four output features (W rows) against one x row.
template <int NO>
inline void Dot(const float* xr, int64_t in, const float* w, float* res) {
  v16f acc[NO];
#pragma GCC unroll 4
  for (int a = 0; a < NO; ++a) acc[a] = Splat(0.f);
  int64_t k = 0;
  for (; k + 16 <= in; k += 16) {
    const v16f xv = Load(xr + k);
#pragma GCC unroll 4
    for (int a = 0; a < NO; ++a) acc[a] += Load(w + a * in + k) * xv;
  }
#pragma GCC unroll 4
  for (int a = 0; a < NO; ++a) {
    float s = HSum(acc[a]);
    for (int64_t kk = k; kk < in; ++kk) s += w[a * in + kk] * xr[kk];
    res[a] = s;
  }
}

}  // namespace

void SmallGemmF32(const float* x, int64_t n, int64_t in, const float* w, int64_t o_begin, int64_t o_end, float* out,
                  int64_t ldo) {
  int64_t o = o_begin;
  float res[4];
  for (; o + 4 <= o_end; o += 4) {
    const float* wo = w + o * in;
    for (int64_t i = 0; i < n; ++i) {
      Dot<4>(x + i * in, in, wo, res);
      for (int a = 0; a < 4; ++a) out[i * ldo + o + a] = res[a];
    }
  }
  for (; o < o_end; ++o) {
    for (int64_t i = 0; i < n; ++i) {
      Dot<1>(x + i * in, in, w + o * in, res);
      out[i * ldo + o] = res[0];
    }
  }
}

}  // namespace sqa::cpu
