// out[n, of] = x[n, in] * w[of, in]^T for few rows (decode): streams W once, no packing.
// OpenBLAS packs all of W on every sgemm call, which dominates when n is 1..16.
#pragma once

#include <cstdint>

namespace sqa::cpu {

inline constexpr int64_t kSmallGemmMaxRows = 16;

// Output features [o_begin, o_end) only (callers split them across threads).
void SmallGemmF32(const float* x, int64_t n, int64_t in, const float* w, int64_t o_begin, int64_t o_end, float* out,
                  int64_t ldo);

}  // namespace sqa::cpu
