// LSE merge of partial attention results over disjoint key sets (sharding, KV tiers):
// L = m + log(sum_s exp(lse_s - m)), o = sum_s exp(lse_s - L) o_s, fp32; empty parts have
// lse = -inf and contribute nothing; all-empty rows give o = 0 and L = -inf.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "workers/engine/cuda/attention.h"
#include "workers/engine/cuda/attention_internal.cuh"

namespace sqa::cuda {
namespace {

using namespace attn_detail;

struct MergeKernelArgs {
  const void* outs[kMaxMergeParts];
  const float* lses[kMaxMergeParts];
  int parts;
  int64_t rows;  // n * heads
  int head_dim;
  bf16* out;
  float* lse_out;
};

// One thread per (row, group of 8 elements) when dh % 8 == 0, else per (row, element) with V=1.
template <typename T, int V>
__global__ void MergeKernel(const MergeKernelArgs a) {
  const int groups = a.head_dim / V;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.rows * groups) return;
  const int64_t row = idx / groups;
  const int d0 = static_cast<int>(idx - row * groups) * V;
  float mx = -INFINITY;
  for (int s = 0; s < a.parts; ++s) mx = fmaxf(mx, a.lses[s][row]);
  float acc[V];
#pragma unroll
  for (int j = 0; j < V; ++j) acc[j] = 0.f;
  float sum = 0.f;
  if (mx != -INFINITY) {
    for (int s = 0; s < a.parts; ++s) {
      const float ls = a.lses[s][row];
      if (ls == -INFINITY) continue;
      const float w = expf(ls - mx);
      sum += w;
      const T* src = static_cast<const T*>(a.outs[s]) + row * a.head_dim + d0;
#pragma unroll
      for (int j = 0; j < V; ++j) acc[j] += w * ToF32<T>(src[j]);
    }
  }
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  bf16* dst = a.out + row * a.head_dim + d0;
#pragma unroll
  for (int j = 0; j < V; ++j) dst[j] = __float2bfloat16(acc[j] * inv);
  if (d0 == 0 && a.lse_out != nullptr) a.lse_out[row] = sum > 0.f ? mx + logf(sum) : -INFINITY;
}

template <typename T>
absl::Status LaunchMergeT(const MergeKernelArgs& a, cudaStream_t stream) {
  const bool vec = a.head_dim % 8 == 0;
  const int64_t threads = a.rows * (vec ? a.head_dim / 8 : a.head_dim);
  const int block = 256;
  const int64_t blocks = (threads + block - 1) / block;
  if (blocks > 0x7fffffff) return absl::InvalidArgumentError("attention merge: too many rows for one launch");
  if (vec) {
    MergeKernel<T, 8><<<static_cast<unsigned>(blocks), block, 0, stream>>>(a);
  } else {
    MergeKernel<T, 1><<<static_cast<unsigned>(blocks), block, 0, stream>>>(a);
  }
  return LaunchStatus("attention merge");
}

}  // namespace

absl::Status LaunchAttentionMerge(const MergeParams& p, cudaStream_t stream) {
  if (p.num_parts < 1 || p.num_parts > kMaxMergeParts) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention merge: ", p.num_parts, " parts; 1 to ", kMaxMergeParts, " are supported"));
  }
  if (p.head_dim < 1 || p.head_dim > 256 || p.heads < 1 || p.n < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention merge: bad shape n=", p.n, " heads=", p.heads, " head_dim=", p.head_dim));
  }
  if (p.n == 0) return absl::OkStatus();
  if (p.outs == nullptr || p.lses == nullptr || p.out == nullptr) {
    return absl::InvalidArgumentError("attention merge: null pointer");
  }
  MergeKernelArgs a{};
  for (int s = 0; s < p.num_parts; ++s) {
    if (p.outs[s] == nullptr || p.lses[s] == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("attention merge: part ", s, " has a null pointer"));
    }
    if (p.outs[s] == p.out) return absl::InvalidArgumentError("attention merge: out aliases an input");
    a.outs[s] = p.outs[s];
    a.lses[s] = p.lses[s];
  }
  a.parts = p.num_parts;
  a.rows = p.n * p.heads;
  a.head_dim = p.head_dim;
  a.out = static_cast<bf16*>(p.out);
  a.lse_out = p.lse_out;
  return p.part_type == PartialType::kF32 ? LaunchMergeT<float>(a, stream) : LaunchMergeT<bf16>(a, stream);
}

}  // namespace sqa::cuda
