// GPU sampling (see sampling_kernels.h). Three steps per call:
//   1. RowStats: one block per row: max, argmax (ties to the lowest id, NaN never), log-sum-exp
//      (float exponentials, double sum); greedy rows are finished here; sort keys/ids are written
//      for the others.
//   2. A segmented radix sort (CUB, stable) of (logit, id) pairs, descending: candidates ordered
//      by logit, ties by ascending id, as the host sorts them.
//   3. Pick: one block per sampled row: probabilities exp((l_i - l_0) / T) of the top-k in double,
//      their inclusive prefix sums, the top-p cut (first prefix reaching top_p * total) and the
//      pick (first prefix above u * kept), each found by the one thread at the crossing.
#include <cub/cub.cuh>
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "workers/engine/cuda/cuda_check.h"
#include "workers/engine/cuda/sampling_kernels.h"

namespace sqa::cuda {
namespace {

constexpr int kThreads = 1024;      // RowStatsKernel
constexpr int kPickThreads = 256;   // PickKernel (double scan: more registers per thread)

struct Layout {
  size_t keys_in, keys_out, ids_in, ids_out, lse, cum, offsets, temp, temp_bytes, total;
};

size_t Up(size_t b) { return (b + 255) & ~size_t{255}; }

Layout MakeLayout(int rows, int64_t vocab) {
  const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(vocab);
  Layout l{};
  size_t temp_bytes = 0;
  cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, temp_bytes, static_cast<const float*>(nullptr),
                                                     static_cast<float*>(nullptr), static_cast<const int32_t*>(nullptr),
                                                     static_cast<int32_t*>(nullptr), static_cast<int64_t>(n), rows,
                                                     static_cast<const int64_t*>(nullptr),
                                                     static_cast<const int64_t*>(nullptr));
  size_t off = 0;
  l.keys_in = off, off += Up(n * sizeof(float));
  l.keys_out = off, off += Up(n * sizeof(float));
  l.ids_in = off, off += Up(n * sizeof(int32_t));
  l.ids_out = off, off += Up(n * sizeof(int32_t));
  l.lse = off, off += Up(static_cast<size_t>(rows) * sizeof(double));
  l.cum = off, off += Up(n * sizeof(double));
  l.offsets = off, off += Up((static_cast<size_t>(rows) + 1) * sizeof(int64_t));
  l.temp = off, off += Up(temp_bytes);
  l.temp_bytes = temp_bytes;
  l.total = off;
  return l;
}

__global__ void __launch_bounds__(kThreads) RowStatsKernel(const float* __restrict__ logits, int64_t vocab, const SampleRowParams* __restrict__ params,
                               float* __restrict__ keys, int32_t* __restrict__ ids, double* __restrict__ lse_out,
                               int64_t* __restrict__ offsets, int32_t* __restrict__ tokens,
                               float* __restrict__ logprobs) {
  const int row = blockIdx.x;
  const float* x = logits + static_cast<int64_t>(row) * vocab;
  float best = -INFINITY;
  int64_t best_id = -1;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = x[i];
    if (!isnan(v) && (best_id < 0 || v > best)) best = v, best_id = i;  // i ascends per thread
  }
  using BR = cub::BlockReduce<float, kThreads>;
  using BRD = cub::BlockReduce<double, kThreads>;
  using BRI = cub::BlockReduce<long long, kThreads>;
  __shared__ union {
    typename BR::TempStorage f;
    typename BRD::TempStorage d;
    typename BRI::TempStorage i;
  } tmp;
  __shared__ float s_max;
  __shared__ long long s_arg;
  __shared__ double s_lse;
  const float m = BR(tmp.f).Reduce(best_id >= 0 ? best : -INFINITY, [](float a, float b) { return a > b ? a : b; });
  if (threadIdx.x == 0) s_max = m;
  __syncthreads();
  // Lowest id holding the max (NaN-free); -1 if every logit is NaN.
  const long long cand = (best_id >= 0 && best == s_max) ? best_id : LLONG_MAX;
  const long long arg = BRI(tmp.i).Reduce(cand, [](long long a, long long b) { return a < b ? a : b; });
  if (threadIdx.x == 0) s_arg = arg == LLONG_MAX ? 0 : arg;
  __syncthreads();
  double sum = 0;
  const bool finite_max = isfinite(s_max);
  if (finite_max) {
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v = x[i];
      // exp in float (v - max <= 0, 2 ulp) summed in double: the double exp took most of this
      // kernel's 26 us at a 32000-word vocabulary.
      if (!isnan(v)) sum += static_cast<double>(expf(v - s_max));
    }
  }
  const double total = BRD(tmp.d).Sum(sum);
  if (threadIdx.x == 0) s_lse = finite_max ? s_max + log(total) : static_cast<double>(s_max);
  __syncthreads();
  const double lse = s_lse;
  const SampleRowParams p = params[row];
  const bool greedy = p.temperature <= 0.f || !isfinite(lse);
  if (threadIdx.x == 0) {
    lse_out[row] = lse;
    offsets[row] = static_cast<int64_t>(row) * vocab;
    if (row == gridDim.x - 1) offsets[row + 1] = static_cast<int64_t>(row + 1) * vocab;
    if (greedy) {
      tokens[row] = static_cast<int32_t>(s_arg);
      logprobs[row] = isfinite(lse) ? static_cast<float>(static_cast<double>(x[s_arg]) - lse) : 0.f;
    }
  }
  if (greedy) return;  // the sort keys are for sampled rows only (PickKernel skips greedy ones)
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = x[i];
    keys[static_cast<int64_t>(row) * vocab + i] = isnan(v) ? -INFINITY : v;
    ids[static_cast<int64_t>(row) * vocab + i] = static_cast<int32_t>(i);
  }
}

__global__ void __launch_bounds__(kPickThreads) PickKernel(const float* __restrict__ logits, int64_t vocab, const SampleRowParams* __restrict__ params,
                           const float* __restrict__ keys, const int32_t* __restrict__ ids,
                           const double* __restrict__ lse_in, double* __restrict__ cum, int32_t* __restrict__ tokens,
                           float* __restrict__ logprobs) {
  const int row = blockIdx.x;
  const SampleRowParams p = params[row];
  const double lse = lse_in[row];
  if (p.temperature <= 0.f || !isfinite(lse)) return;  // finished by RowStatsKernel
  const int64_t base = static_cast<int64_t>(row) * vocab;
  const float* k = keys + base;
  const int32_t* id = ids + base;
  double* c = cum + base;
  const int64_t kk = (p.top_k > 0 && p.top_k < vocab) ? p.top_k : vocab;
  const double inv_t = 1.0 / static_cast<double>(p.temperature);
  const double top = static_cast<double>(k[0]);
  using Scan = cub::BlockScan<double, kPickThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ double s_carry;
  __shared__ int64_t s_keep, s_pick;
  if (threadIdx.x == 0) s_carry = 0, s_keep = kk, s_pick = -1;
  __syncthreads();
  for (int64_t t0 = 0; t0 < kk; t0 += blockDim.x) {
    const int64_t i = t0 + threadIdx.x;
    const double pr = i < kk ? exp((static_cast<double>(k[i]) - top) * inv_t) : 0.0;
    double incl;
    Scan(scan_tmp).InclusiveSum(pr, incl);
    const double carry = s_carry;
    if (i < kk) c[i] = carry + incl;
    __syncthreads();
    if (threadIdx.x == blockDim.x - 1) s_carry = carry + incl;
    __syncthreads();
  }
  const double total = s_carry;
  if (p.top_p < 1.f) {
    const double target = static_cast<double>(p.top_p) * total;
    for (int64_t i = threadIdx.x; i < kk; i += blockDim.x) {
      if (c[i] >= target && (i == 0 || c[i - 1] < target)) s_keep = i + 1;
    }
  }
  __syncthreads();
  const int64_t keep = s_keep;
  const double u = p.u * c[keep - 1];
  for (int64_t i = threadIdx.x; i < keep; i += blockDim.x) {
    if (u < c[i] && (i == 0 || !(u < c[i - 1]))) s_pick = i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int64_t pick = s_pick >= 0 ? s_pick : keep - 1;
    const int32_t tok = id[pick];
    tokens[row] = tok;
    logprobs[row] = static_cast<float>(static_cast<double>(logits[base + tok]) - lse);
  }
}

}  // namespace

size_t SampleWorkspaceBytes(int rows, int64_t vocab) { return MakeLayout(rows, vocab).total; }

absl::Status LaunchSample(const float* logits, int rows, int64_t vocab, const SampleRowParams* params,
                          bool any_random, void* workspace, size_t workspace_bytes, int32_t* tokens,
                          float* logprobs, cudaStream_t stream) {
  if (rows == 0) return absl::OkStatus();
  if (vocab <= 0 || vocab > (int64_t{1} << 31) - 1) return absl::InvalidArgumentError("Sample: bad vocabulary size");
  const Layout l = MakeLayout(rows, vocab);
  if (workspace_bytes < l.total) return absl::InvalidArgumentError("Sample: workspace too small");
  char* ws = static_cast<char*>(workspace);
  auto* keys_in = reinterpret_cast<float*>(ws + l.keys_in);
  auto* keys_out = reinterpret_cast<float*>(ws + l.keys_out);
  auto* ids_in = reinterpret_cast<int32_t*>(ws + l.ids_in);
  auto* ids_out = reinterpret_cast<int32_t*>(ws + l.ids_out);
  auto* lse = reinterpret_cast<double*>(ws + l.lse);
  auto* cum = reinterpret_cast<double*>(ws + l.cum);
  auto* offsets = reinterpret_cast<int64_t*>(ws + l.offsets);
  RowStatsKernel<<<rows, kThreads, 0, stream>>>(logits, vocab, params, keys_in, ids_in, lse, offsets, tokens, logprobs);
  SQA_GPU_RETURN_IF_LAUNCH_ERROR("RowStatsKernel");
  if (!any_random) return absl::OkStatus();
  size_t temp_bytes = l.temp_bytes;
  SQA_GPU_RETURN_IF_ERROR(cub::DeviceSegmentedRadixSort::SortPairsDescending(
      ws + l.temp, temp_bytes, keys_in, keys_out, ids_in, ids_out, static_cast<int64_t>(rows) * vocab, rows, offsets,
      offsets + 1, 0, static_cast<int>(sizeof(float) * 8), stream));
  PickKernel<<<rows, kPickThreads, 0, stream>>>(logits, vocab, params, keys_out, ids_out, lse, cum, tokens, logprobs);
  SQA_GPU_RETURN_IF_LAUNCH_ERROR("PickKernel");
  return absl::OkStatus();
}

}  // namespace sqa::cuda
