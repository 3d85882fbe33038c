// The read-only floor kernel of sqa-attn-bench (read_floor.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace sqa::bench {

// Reads `bytes` (a multiple of 16, 16-byte aligned) from each of a and b on `stream` with
// ctas_per_sm (1-8) CTAs on each of `sms` SMs, and writes nothing but (practically never) one word
// of `sink`.
cudaError_t LaunchReadFloor(const void* a, const void* b, size_t bytes, unsigned* sink, int sms, int ctas_per_sm,
                            cudaStream_t stream);

// The same over a paged cache: blocks table[0 .. num_blocks) of block_bytes (a multiple of 16)
// each, from a and from b, the decode kernels' access pattern. Each CTA reads a contiguous run of
// the table's entries, as a decode split reads its keys.
cudaError_t LaunchReadFloorPaged(const void* a, const void* b, const int32_t* table, int64_t num_blocks,
                                 size_t block_bytes, unsigned* sink, int sms, int ctas_per_sm, cudaStream_t stream);

}  // namespace sqa::bench
