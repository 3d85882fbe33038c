// sqa-cpu-attention-bench: causal prefill attention GFLOP/s of the CPU backend against OpenBLAS
// sgemm in the same process. FLOPs counted as 2 * 2 * Ha * N^2 * dh / 2 (causal half of QK^T
// and PV). Usage: sqa-cpu-attention-bench [N=4096] [reps=3] then (Hq,Hkv,dh) triples, e.g.
//   sqa-cpu-attention-bench 4096 3 8,8,64 8,8,128 16,16,64 16,16,128
#include <cblas.h>
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "workers/engine/cpu/cpu_backend.h"

namespace {

// Wall time, or with SQA_BENCH_CPU_TIME=1 the process CPU time (all threads): on a shared,
// overloaded machine that measures the kernels rather than the scheduler. Per-CPU-second rates
// compare kernel efficiency; multiply by the thread count for the ideal wall rate.
double Now() {
  static const bool cpu = std::getenv("SQA_BENCH_CPU_TIME") != nullptr;
  if (cpu) {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

sqa::TensorView View(std::vector<float>& v, std::vector<int64_t> shape) {
  sqa::TensorView t;
  t.data = v.data();
  t.shape = std::move(shape);
  return t;
}

// OpenBLAS with as many threads as the attention gets (the CPU backend itself keeps OpenBLAS
// single-threaded and splits GEMMs with OpenMP).
double SgemmGflops(int n, int reps) {
  openblas_set_num_threads(omp_get_max_threads());
  std::vector<float> a(static_cast<size_t>(n) * n, 0.5f), b(a), c(a);
  double best = 1e30;
  for (int r = 0; r < reps + 1; ++r) {
    const double t0 = Now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    if (r > 0) best = std::min(best, Now() - t0);
  }
  openblas_set_num_threads(1);
  return 2.0 * n * n * static_cast<double>(n) / best / 1e9;
}

int Run(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 3;
  std::vector<std::string> cfgs;
  for (int i = 3; i < argc; ++i) cfgs.push_back(argv[i]);
  if (cfgs.empty()) cfgs = {"8,8,64", "8,8,128", "16,16,64", "16,16,128"};
  auto be = sqa::CreateCpuBackend(sqa::BackendOptions{});
  if (!be.ok()) return 1;
  const double sg = SgemmGflops(2048, reps);
  std::printf("threads %d, sgemm 2048^3: %.1f GFLOP/s\n", omp_get_max_threads(), sg);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (const std::string& c : cfgs) {
    int64_t hq, hkv, dh;
    if (std::sscanf(c.c_str(), "%ld,%ld,%ld", &hq, &hkv, &dh) != 3) return 2;
    const int64_t ha = std::max(hq, hkv), bs = 64;
    sqa::KvCacheShape s;
    s.num_layers = 1;
    s.num_blocks = (n + bs - 1) / bs;
    s.block_size = bs;
    s.num_kv_heads = hkv;
    s.head_dim = dh;
    auto cache = (*be)->CreateKvCache(s);
    if (!cache.ok()) return 1;
    std::vector<float> k(static_cast<size_t>(n * hkv * dh)), v(k.size()), q(static_cast<size_t>(n * hq * dh)),
        out(static_cast<size_t>(n * ha * dh)), lse(static_cast<size_t>(n * ha));
    for (auto* vec : {&k, &v, &q})
      for (float& x : *vec) x = nd(rng);
    std::vector<int64_t> slots(static_cast<size_t>(n));
    std::vector<int32_t> table(static_cast<size_t>(s.num_blocks));
    for (int64_t b = 0; b < s.num_blocks; ++b) table[b] = static_cast<int32_t>(s.num_blocks - 1 - b);  // not in order
    for (int64_t i = 0; i < n; ++i) slots[i] = table[i / bs] * bs + i % bs;
    if (!(*be)->WriteKv(**cache, 0, View(k, {n, hkv, dh}), View(v, {n, hkv, dh}), slots.data()).ok()) return 1;
    sqa::PrefillAttentionArgs a;
    a.cache = cache->get();
    a.q = View(q, {n, hq, dh});
    a.kv = {table.data(), n};
    a.out = View(out, {n, ha, dh});
    a.lse = lse.data();
    double best = 1e30;
    for (int r = 0; r < reps + 1; ++r) {
      const double t0 = Now();
      if (!(*be)->AttentionPrefill(a).ok()) return 1;
      if (r > 0) best = std::min(best, Now() - t0);
    }
    const double flops = 2.0 * 2.0 * ha * static_cast<double>(n) * n * dh / 2.0;
    // Decode: one query per sequence over the same n keys, batch of 1.
    sqa::DecodeAttentionArgs d;
    d.cache = cache->get();
    d.q = View(q, {1, hq, dh});
    d.seqs = {{table.data(), n}};
    d.out = View(out, {1, ha, dh});
    double dbest = 1e30;
    for (int r = 0; r < 20; ++r) {
      const double t0 = Now();
      if (!(*be)->AttentionDecode(d).ok()) return 1;
      if (r > 0) dbest = std::min(dbest, Now() - t0);
    }
    const double kv_bytes = 2.0 * n * hkv * dh * sizeof(float);
    std::printf("prefill N=%ld Hq=%ld Hkv=%ld dh=%ld: %.3f s, %.1f GFLOP/s (%.0f%% of sgemm) | decode %.3f ms, %.1f GB/s KV read\n",
                static_cast<long>(n), static_cast<long>(hq), static_cast<long>(hkv), static_cast<long>(dh), best,
                flops / best / 1e9, 100.0 * flops / best / 1e9 / sg, dbest * 1e3, kv_bytes / dbest / 1e9);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
