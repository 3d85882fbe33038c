// GPU attention kernels (workers/engine/cuda/attention.h) against a float64 CPU attention computed
// here, on fresh random inputs, every head layout (MHA, GQA, MQA, SQA, rSQA), head_dim 64/128,
// causal chunks with q_pos0 > 0, paged and contiguous KV, ragged decode batches with split-KV,
// and the LSE merge. Outputs are poisoned with NaN before each launch. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "workers/engine/cuda/attention.h"

namespace sqa::cuda {
namespace {

#define ASSERT_CUDA(x) ASSERT_EQ((x), cudaSuccess) << cudaGetErrorString(x)

bool HaveGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

uint16_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}
float FromBf16(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<uint16_t> RandomBf16(size_t n, std::mt19937& rng, float scale = 1.f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = ToBf16(d(rng));
  return v;
}

template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) {
    if (cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)) != cudaSuccess) p = nullptr;
  }
  DevBuf(const DevBuf&) = delete;
  ~DevBuf() { cudaFree(p); }
  void Upload(const std::vector<T>& h) { ASSERT_CUDA(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice)); }
  std::vector<T> Download() const {
    std::vector<T> h(n);
    EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }
  void Poison() { ASSERT_CUDA(cudaMemset(p, 0xff, n * sizeof(T))); }  // NaN for bf16 and f32
};

// KV of one sequence in host memory as [pos][Hkv][dh] floats (bf16-exact values).
struct HostKv {
  int64_t len = 0;
  std::vector<float> k, v;
};

// out[t][h][d], lse[t][h] in double for queries q[t][Hq][dh] at positions pos0 + t.
void ReferenceAttention(const std::vector<float>& q, int64_t n, int64_t pos0, const HostKv& kv, int hq, int hkv,
                        int dh, bool causal, double scale, std::vector<double>* out, std::vector<double>* lse) {
  const int ha = std::max(hq, hkv), g = ha / hkv;
  out->assign(n * ha * dh, 0.0);
  lse->assign(n * ha, -std::numeric_limits<double>::infinity());
  std::vector<double> s;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t last = causal ? std::min(pos0 + t, kv.len - 1) : kv.len - 1;
    for (int h = 0; h < ha; ++h) {
      const int qh = h % hq, kh = h / g;
      if (last < 0) continue;
      s.assign(last + 1, 0.0);
      double mx = -1e300;
      for (int64_t p = 0; p <= last; ++p) {
        double acc = 0;
        for (int d = 0; d < dh; ++d) acc += double(q[(t * hq + qh) * dh + d]) * kv.k[(p * hkv + kh) * dh + d];
        s[p] = acc * scale;
        mx = std::max(mx, s[p]);
      }
      double sum = 0;
      for (auto& x : s) sum += (x = std::exp(x - mx));
      double* o = &(*out)[(t * ha + h) * dh];
      for (int64_t p = 0; p <= last; ++p)
        for (int d = 0; d < dh; ++d) o[d] += s[p] / sum * kv.v[(p * hkv + kh) * dh + d];
      (*lse)[t * ha + h] = mx + std::log(sum);
    }
  }
}

// Paged storage of several sequences in one block pool with scattered block ids. Slots that no
// sequence uses hold NaN, so a kernel that reads past kv_len fails the comparison.
struct PagedPool {
  int hkv, dh, bs;
  int64_t num_blocks = 0;
  std::vector<uint16_t> k, v;             // [num_blocks][bs][Hkv][dh] (token-major blocks)
  std::vector<std::vector<int32_t>> tables;

  PagedPool(int hkv_, int dh_, int bs_, const std::vector<int64_t>& lens, std::mt19937& rng)
      : hkv(hkv_), dh(dh_), bs(bs_) {
    int64_t total = 0;
    for (int64_t l : lens) total += (l + bs - 1) / bs;
    num_blocks = total + 3;  // a few never used
    std::vector<int32_t> ids(num_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    size_t next = 0;
    for (int64_t l : lens) {
      tables.emplace_back();
      for (int64_t b = 0; b < (l + bs - 1) / bs; ++b) tables.back().push_back(ids[next++]);
    }
    const size_t elems = static_cast<size_t>(num_blocks) * hkv * bs * dh;
    k.assign(elems, 0x7fc0);  // bf16 NaN
    v.assign(elems, 0x7fc0);
  }
  size_t Index(int seq, int64_t pos, int kh, int d) const {
    const int64_t blk = tables[seq][pos / bs];
    return ((static_cast<size_t>(blk) * bs + pos % bs) * hkv + kh) * dh + d;
  }
  // Fills sequence `seq` with random K/V and returns it as host floats.
  HostKv Fill(int seq, int64_t len, std::mt19937& rng) {
    HostKv kv;
    kv.len = len;
    kv.k.resize(len * hkv * dh);
    kv.v.resize(len * hkv * dh);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (int64_t p = 0; p < len; ++p)
      for (int kh = 0; kh < hkv; ++kh)
        for (int d = 0; d < dh; ++d) {
          const uint16_t kb = ToBf16(nd(rng)), vb = ToBf16(nd(rng));
          k[Index(seq, p, kh, d)] = kb;
          v[Index(seq, p, kh, d)] = vb;
          kv.k[(p * hkv + kh) * dh + d] = FromBf16(kb);
          kv.v[(p * hkv + kh) * dh + d] = FromBf16(vb);
        }
    return kv;
  }
};

struct Errors {
  double rel = 0, max_abs = 0, lse_max = 0;
  int64_t nonfinite = 0;
  int64_t lse_worst = -1;  // index of the largest LSE error (token * Ha + head)
};

Errors Compare(const std::vector<uint16_t>& got, const std::vector<double>& ref, const std::vector<float>* lse_got,
               const std::vector<double>* lse_ref) {
  Errors e;
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = FromBf16(got[i]);
    if (!std::isfinite(g)) {
      ++e.nonfinite;
      continue;
    }
    num += (g - ref[i]) * (g - ref[i]);
    den += ref[i] * ref[i];
    e.max_abs = std::max(e.max_abs, std::abs(g - ref[i]));
  }
  e.rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  if (lse_got != nullptr) {
    for (size_t i = 0; i < lse_ref->size(); ++i) {
      const double g = (*lse_got)[i], r = (*lse_ref)[i];
      if (std::isinf(r) && r < 0) {
        if (!(std::isinf(g) && g < 0)) ++e.nonfinite;
        continue;
      }
      if (!std::isfinite(g)) {
        ++e.nonfinite;
        continue;
      }
      if (std::abs(g - r) > e.lse_max) e.lse_max = std::abs(g - r), e.lse_worst = static_cast<int64_t>(i);
    }
  }
  return e;
}

struct Layout {
  int hq, hkv;
  const char* name;
};
const Layout kLayouts[] = {{4, 4, "MHA"}, {8, 2, "GQA"}, {8, 1, "MQA"}, {4, 2, "SQA"},
                           {2, 4, "rSQA"}, {32, 1, "MQA32"}, {2, 8, "rSQA4x"}};

struct PrefillCase {
  int dh;
  int64_t n, q_pos0, kv_len;
  bool causal, paged;
  int bs;
};

// The prefill kernels the tests compare with the reference, as named in failure traces.
const std::pair<PrefillKernel, const char*> kPrefillKernels[] = {
    {PrefillKernel::kAuto, "wgmma kernel (TMA where the KV allows)"},
    {PrefillKernel::kWgmmaCpAsync, "wgmma kernel, cp.async producer"},
    {PrefillKernel::kWgmmaPingPong, "wgmma ping-pong kernel"},
    {PrefillKernel::kWgmmaLockstep, "wgmma lockstep kernel"},
    {PrefillKernel::kMmaSync, "mma.sync kernel"}};

// Runs every prefill kernel on p's inputs (out and lse poisoned before each) and checks it against
// the float64 reference at bf16 tolerance.
void ExpectPrefillKernelsMatch(PrefillParams p, DevBuf<uint16_t>& dout, DevBuf<float>& dlse,
                               const std::vector<double>& ref, const std::vector<double>& ref_lse, int ha,
                               cudaStream_t stream) {
  for (const auto& [kernel, name] : kPrefillKernels) {
    SCOPED_TRACE(name);
    dout.Poison();
    dlse.Poison();
    p.out = dout.p;
    p.lse = dlse.p;
    p.kernel = kernel;
    ASSERT_TRUE(LaunchAttentionPrefill(p, stream).ok());
    ASSERT_CUDA(cudaStreamSynchronize(stream));
    auto got = dout.Download();
    auto got_lse = dlse.Download();
    Errors e = Compare(got, ref, &got_lse, &ref_lse);
    EXPECT_EQ(e.nonfinite, 0);
    EXPECT_LT(e.rel, 1e-2);
    EXPECT_LT(e.max_abs, 5e-2);
    EXPECT_LT(e.lse_max, 1e-2) << "worst at token " << e.lse_worst / ha << ", head " << e.lse_worst % ha;
  }
}

class AttentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
    ASSERT_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  cudaStream_t stream_ = nullptr;
  std::mt19937 rng_{std::random_device{}()};
};

TEST_F(AttentionTest, PrefillMatchesFloat64Reference) {
  const PrefillCase cases[] = {
      {128, 200, 0, 200, true, true, 64},     {64, 131, 0, 131, true, true, 16},
      {128, 77, 300, 377, true, true, 64},    {64, 150, 45, 195, true, false, 0},
      {128, 96, 0, 333, false, true, 48},     {128, 257, 11, 268, true, false, 0},
      {64, 1, 500, 501, true, true, 64},      {128, 300, 700, 1000, true, true, 128},
      // Several 128-key tiles: block sizes that are multiples of 64 but not of 128, odd chunk
      // starts, and a chunk longer than one 128-row tile per KV head.
      {128, 600, 0, 600, true, true, 192},    {64, 513, 100, 613, true, true, 64},
      {128, 260, 389, 649, true, false, 0},   {128, 130, 0, 700, false, true, 16},
      // No keys at all (non-causal, kv_len 0): out 0, lse -inf.
      {128, 7, 0, 0, false, false, 0},
  };
  for (const Layout& L : kLayouts) {
    for (const PrefillCase& c : cases) {
      SCOPED_TRACE(testing::Message() << L.name << " Hq=" << L.hq << " Hkv=" << L.hkv << " dh=" << c.dh << " n=" << c.n
                                      << " q_pos0=" << c.q_pos0 << " kv=" << c.kv_len << " causal=" << c.causal
                                      << " paged=" << c.paged << " bs=" << c.bs);
      const int ha = std::max(L.hq, L.hkv);
      auto qh = RandomBf16(c.n * L.hq * c.dh, rng_);
      std::vector<float> qf(qh.size());
      for (size_t i = 0; i < qh.size(); ++i) qf[i] = FromBf16(qh[i]);
      HostKv kv;
      std::vector<uint16_t> kdev_h, vdev_h;
      std::vector<int32_t> table;
      int64_t pool_blocks = 0;
      if (c.paged) {
        PagedPool pool(L.hkv, c.dh, c.bs, {c.kv_len}, rng_);
        kv = pool.Fill(0, c.kv_len, rng_);
        kdev_h = pool.k;
        vdev_h = pool.v;
        table = pool.tables[0];
        pool_blocks = pool.num_blocks;
      } else {
        kdev_h = RandomBf16(c.kv_len * L.hkv * c.dh, rng_);
        vdev_h = RandomBf16(c.kv_len * L.hkv * c.dh, rng_);
        kv.len = c.kv_len;
        kv.k.resize(kdev_h.size());
        kv.v.resize(vdev_h.size());
        for (size_t i = 0; i < kdev_h.size(); ++i) kv.k[i] = FromBf16(kdev_h[i]), kv.v[i] = FromBf16(vdev_h[i]);
      }
      DevBuf<uint16_t> dq(qh.size()), dk(kdev_h.size()), dv(vdev_h.size()), dout(c.n * ha * c.dh);
      DevBuf<float> dlse(c.n * ha);
      DevBuf<int32_t> dtable(table.size());
      dq.Upload(qh);
      dk.Upload(kdev_h);
      dv.Upload(vdev_h);
      if (!table.empty()) dtable.Upload(table);
      std::vector<double> ref, ref_lse;
      ReferenceAttention(qf, c.n, c.q_pos0, kv, L.hq, L.hkv, c.dh, c.causal, 1.0 / std::sqrt(double(c.dh)), &ref,
                         &ref_lse);
      PrefillParams p;
      p.q = dq.p;
      p.n = c.n;
      p.q_pos0 = c.q_pos0;
      p.kv.k = dk.p;
      p.kv.v = dv.p;
      p.kv.block_table = c.paged ? dtable.p : nullptr;
      p.kv.block_size = c.paged ? c.bs : 64;
      p.kv.num_blocks = c.paged ? pool_blocks : 0;
      p.kv_len = c.kv_len;
      p.num_q_heads = L.hq;
      p.num_kv_heads = L.hkv;
      p.head_dim = c.dh;
      p.causal = c.causal;
      ExpectPrefillKernelsMatch(p, dout, dlse, ref, ref_lse, ha, stream_);
    }
  }
}

// Keys far from the diagonal score much higher than those near it, so a row's max grows tile
// after tile (the kernels walk the keys from the diagonal backwards), by more and by less than
// the wgmma kernels' slack before they move the max. Contiguous KV: the producer does not matter.
TEST_F(AttentionTest, PrefillMatchesReferenceWhenTheRowMaxGrows) {
  struct Case {
    int dh;
    int64_t n, q_pos0, kv_len;
  };
  const Case cases[] = {{128, 1000, 0, 1000}, {64, 700, 0, 700}, {128, 300, 900, 1200}};
  const Layout layouts[] = {{4, 4, "MHA"}, {32, 1, "MQA32"}, {2, 4, "rSQA"}};
  for (const Layout& L : layouts) {
    for (const Case& c : cases) {
      SCOPED_TRACE(testing::Message() << L.name << " dh=" << c.dh << " n=" << c.n << " q_pos0=" << c.q_pos0
                                      << " kv=" << c.kv_len);
      const int ha = std::max(L.hq, L.hkv);
      auto qh = RandomBf16(c.n * L.hq * c.dh, rng_, 1.5f);
      std::vector<float> qf(qh.size());
      for (size_t i = 0; i < qh.size(); ++i) qf[i] = FromBf16(qh[i]);
      HostKv kv;
      kv.len = c.kv_len;
      std::normal_distribution<float> nd(0.f, 1.f);
      std::vector<uint16_t> kh(c.kv_len * L.hkv * c.dh), vh(kh.size());
      kv.k.resize(kh.size());
      kv.v.resize(kh.size());
      for (int64_t t = 0; t < c.kv_len; ++t) {
        const double age = 1.0 - static_cast<double>(t) / static_cast<double>(c.kv_len);
        const float gain = static_cast<float>(1.0 + 7.0 * age * age);
        for (int64_t j = 0; j < L.hkv * c.dh; ++j) {
          const size_t i = static_cast<size_t>(t * L.hkv * c.dh + j);
          kh[i] = ToBf16(gain * nd(rng_));
          vh[i] = ToBf16(nd(rng_));
          kv.k[i] = FromBf16(kh[i]);
          kv.v[i] = FromBf16(vh[i]);
        }
      }
      // The premise: for the last row of query head 0, the oldest 128 keys' max score exceeds the
      // diagonal tile's by more than 8 (log2 units).
      {
        const int64_t r = c.n - 1, pos = c.q_pos0 + r;
        const double sl2 = 1.0 / std::sqrt(double(c.dh)) / std::log(2.0);
        auto score = [&](int64_t t) {
          double acc = 0;
          for (int d = 0; d < c.dh; ++d) acc += double(qf[(r * L.hq) * c.dh + d]) * kv.k[(t * L.hkv) * c.dh + d];
          return acc * sl2;
        };
        double diag = -1e30, old = -1e30;
        for (int64_t t = pos / 128 * 128; t <= pos; ++t) diag = std::max(diag, score(t));
        for (int64_t t = 0; t < 128; ++t) old = std::max(old, score(t));
        ASSERT_GT(old - diag, 8.0) << "the inputs do not make the row max grow enough";
      }
      DevBuf<uint16_t> dq(qh.size()), dk(kh.size()), dv(vh.size()), dout(c.n * ha * c.dh);
      DevBuf<float> dlse(c.n * ha);
      dq.Upload(qh);
      dk.Upload(kh);
      dv.Upload(vh);
      std::vector<double> ref, ref_lse;
      ReferenceAttention(qf, c.n, c.q_pos0, kv, L.hq, L.hkv, c.dh, true, 1.0 / std::sqrt(double(c.dh)), &ref,
                         &ref_lse);
      PrefillParams p;
      p.q = dq.p;
      p.n = c.n;
      p.q_pos0 = c.q_pos0;
      p.kv.k = dk.p;
      p.kv.v = dv.p;
      p.kv_len = c.kv_len;
      p.num_q_heads = L.hq;
      p.num_kv_heads = L.hkv;
      p.head_dim = c.dh;
      p.causal = true;
      ExpectPrefillKernelsMatch(p, dout, dlse, ref, ref_lse, ha, stream_);
    }
  }
}

TEST_F(AttentionTest, DecodeMatchesFloat64ReferenceWithSplits) {
  const std::vector<int64_t> lens = {1, 17, 300, 0, 1000, 4099, 64, 2500};
  // The prefill layouts plus groups that need two row warps with idle rows (24 heads on one KV
  // head) and two row groups (64).
  std::vector<Layout> layouts(std::begin(kLayouts), std::end(kLayouts));
  layouts.push_back({24, 1, "MQA24"});
  layouts.push_back({64, 1, "MQA64"});
  auto name = [](DecodeKernel k) {
    return k == DecodeKernel::kV10  ? "v10"
           : k == DecodeKernel::kV8 ? "v8"
           : k == DecodeKernel::kV6 ? "v6"
           : k == DecodeKernel::kV5 ? "v5"
           : k == DecodeKernel::kV4 ? "v4"
                                    : "v3";
  };
  for (DecodeKernel kernel :
       {DecodeKernel::kV10, DecodeKernel::kV8, DecodeKernel::kV6, DecodeKernel::kV5, DecodeKernel::kV4, DecodeKernel::kV3})
  for (const Layout& L : layouts) {
    for (int dh : {64, 128}) {
      // 200 splits: more than the longest sequence has tiles (empty splits in the combine). -1:
      // automatic under a bound twice the longest sequence (as a captured graph's), planned for
      // half the longest.
      for (int splits_arg : {1, 3, 200, 0, -1}) {
        const int splits = std::max(splits_arg, 0);
        // Block 48 is not a multiple of either kernel's key tile (the per-key table path).
        const int bs = splits == 3 ? 48 : (dh == 64 ? 16 : 64);
        SCOPED_TRACE(testing::Message() << L.name << " dh=" << dh << " splits=" << splits_arg << " bs=" << bs
                                        << " kernel=" << name(kernel));
        const int ha = std::max(L.hq, L.hkv);
        const int B = static_cast<int>(lens.size());
        PagedPool pool(L.hkv, dh, bs, lens, rng_);
        std::vector<HostKv> kvs;
        for (int b = 0; b < B; ++b) kvs.push_back(pool.Fill(b, lens[b], rng_));
        const int64_t longest = *std::max_element(lens.begin(), lens.end());
        const int64_t max_len = splits_arg < 0 ? 2 * longest + 100 : longest;
        const int64_t stride = (max_len + bs - 1) / bs + 2;
        std::vector<int32_t> tables(B * stride, -1);
        std::vector<int32_t> kv_lens(B);
        for (int b = 0; b < B; ++b) {
          std::copy(pool.tables[b].begin(), pool.tables[b].end(), tables.begin() + b * stride);
          kv_lens[b] = static_cast<int32_t>(lens[b]);
        }
        auto qh = RandomBf16(B * L.hq * dh, rng_);
        DevBuf<uint16_t> dq(qh.size()), dk(pool.k.size()), dv(pool.v.size()), dout(B * ha * dh);
        DevBuf<float> dlse(B * ha);
        DevBuf<int32_t> dtables(tables.size()), dlens(B);
        dq.Upload(qh);
        dk.Upload(pool.k);
        dv.Upload(pool.v);
        dtables.Upload(tables);
        dlens.Upload(kv_lens);
        DecodeParams p;
        // The loose bound's plan is made for a quarter of it (half the longest sequence): every
        // kernel from v4 on must still cover each sequence's keys (v3 plans for the bound).
        p.plan_kv_len = splits_arg < 0 ? longest / 2 : 0;
        p.q = dq.p;
        p.batch = B;
        p.k_cache = dk.p;
        p.v_cache = dv.p;
        p.block_size = bs;
        p.block_tables = dtables.p;
        p.block_table_stride = stride;
        p.kv_lens = dlens.p;
        p.max_kv_len = max_len;
        p.num_q_heads = L.hq;
        p.num_kv_heads = L.hkv;
        p.head_dim = dh;
        p.out = dout.p;
        p.lse = dlse.p;
        p.num_splits = splits;
        p.kernel = kernel;
        const size_t ws_bytes = DecodeWorkspaceBytes(B, L.hq, L.hkv, dh, DecodePlanKvLen(p), splits, kernel);
        DevBuf<unsigned char> ws(ws_bytes);
        if (ws_bytes > 0) {
          ASSERT_CUDA(cudaMemset(ws.p, 0, ws_bytes));  // the merge counters of v5 and later
        }
        p.workspace = ws_bytes > 0 ? ws.p : nullptr;
        p.workspace_bytes = ws_bytes;
        ASSERT_EQ(DecodeSplits(p) > 1, ws_bytes > 0);
        std::vector<std::vector<double>> refs(B), ref_lses(B);
        for (int b = 0; b < B; ++b) {
          std::vector<float> qb(L.hq * dh);
          for (int i = 0; i < L.hq * dh; ++i) qb[i] = FromBf16(qh[b * L.hq * dh + i]);
          ReferenceAttention(qb, 1, lens[b] - 1, kvs[b], L.hq, L.hkv, dh, false, 1.0 / std::sqrt(double(dh)), &refs[b],
                             &ref_lses[b]);
        }
        auto launch_and_check = [&](const char* what) {
          SCOPED_TRACE(what);
          dout.Poison();
          dlse.Poison();
          absl::Status st = LaunchAttentionDecode(p, stream_);
          ASSERT_TRUE(st.ok()) << st;
          ASSERT_CUDA(cudaStreamSynchronize(stream_));
          auto got = dout.Download();
          auto got_lse = dlse.Download();
          for (int b = 0; b < B; ++b) {
            SCOPED_TRACE(testing::Message() << "seq " << b << " len " << lens[b]);
            std::vector<uint16_t> gb(got.begin() + b * ha * dh, got.begin() + (b + 1) * ha * dh);
            std::vector<float> lb(got_lse.begin() + b * ha, got_lse.begin() + (b + 1) * ha);
            Errors e = Compare(gb, refs[b], &lb, &ref_lses[b]);
            EXPECT_EQ(e.nonfinite, 0);
            EXPECT_LT(e.rel, 1e-2);
            EXPECT_LT(e.max_abs, 5e-2);
            EXPECT_LT(e.lse_max, 1e-2);
          }
        };
        launch_and_check("first launch");
        if (kernel == DecodeKernel::kV5 || kernel == DecodeKernel::kV6 || kernel == DecodeKernel::kV8 ||
            kernel == DecodeKernel::kV10) {
          // Twice more on the same workspace with the merge in the split kernel from 32 keys a
          // split (where the grid fits on the GPU), the second time also reading the K/V below
          // the last key before waiting. Every launch is checked: the merge counters must be
          // consistent again after each one.
          p.fuse_min_split_keys = 32;
          launch_and_check("fused");
          p.fresh_kv_tokens = 1;
          launch_and_check("fused, early reads");
          p.early_tiles = 3;
          launch_and_check("fused, every stage read early");
          // The merge kernel, letting the next launch start before the split kernel ends.
          p.fuse_min_split_keys = 1 << 30;
          p.combine_trigger = 1;
          launch_and_check("merge kernel launching the next early, every stage read early");
          p.combine_sliced = 1;
          launch_and_check("sliced merge kernel launching the next early");
          p.combine_trigger = 2;
          launch_and_check("sliced merge kernel launching the next after its loads");
        }
      }
    }
  }
}

// Launches in a row on one workspace, each a programmatic dependent of the one before, with the
// reads before the wait and the merge kernel's early launch of the next: a launch must not read
// or overwrite partials that the launch before it still needs. Two queries alternate, each
// written to its own output, so each launch's result is checked.
TEST_F(AttentionTest, DecodeChainedLaunchesMatchReference) {
  const int dh = 128, bs = 64;
  const std::vector<int64_t> lens = {8192, 3001};
  const int B = static_cast<int>(lens.size());
  struct Case {
    int hq, hkv;
    DecodeKernel kernel;
  };
  for (const Case& c : {Case{32, 1, DecodeKernel::kV10}, Case{32, 8, DecodeKernel::kV10}, Case{32, 1, DecodeKernel::kV8},
                        Case{32, 1, DecodeKernel::kV6}, Case{32, 8, DecodeKernel::kV6}}) {
    const int ha = std::max(c.hq, c.hkv);
    PagedPool pool(c.hkv, dh, bs, lens, rng_);
    std::vector<HostKv> kvs;
    for (int b = 0; b < B; ++b) kvs.push_back(pool.Fill(b, lens[b], rng_));
    const int64_t stride = (lens[0] + bs - 1) / bs;
    std::vector<int32_t> tables(B * stride, -1);
    std::vector<int32_t> kv_lens(B);
    for (int b = 0; b < B; ++b) {
      std::copy(pool.tables[b].begin(), pool.tables[b].end(), tables.begin() + b * stride);
      kv_lens[b] = static_cast<int32_t>(lens[b]);
    }
    DevBuf<uint16_t> dk(pool.k.size()), dv(pool.v.size());
    DevBuf<int32_t> dtables(tables.size()), dlens(B);
    dk.Upload(pool.k);
    dv.Upload(pool.v);
    dtables.Upload(tables);
    dlens.Upload(kv_lens);
    std::vector<std::vector<uint16_t>> qs;
    std::vector<std::vector<std::vector<double>>> refs(2, std::vector<std::vector<double>>(B));
    std::vector<std::unique_ptr<DevBuf<uint16_t>>> dq, dout;
    for (int v = 0; v < 2; ++v) {
      qs.push_back(RandomBf16(B * c.hq * dh, rng_));
      dq.push_back(std::make_unique<DevBuf<uint16_t>>(qs[v].size()));
      dq[v]->Upload(qs[v]);
      dout.push_back(std::make_unique<DevBuf<uint16_t>>(B * ha * dh));
      for (int b = 0; b < B; ++b) {
        std::vector<float> qb(c.hq * dh);
        for (int i = 0; i < c.hq * dh; ++i) qb[i] = FromBf16(qs[v][b * c.hq * dh + i]);
        std::vector<double> lse_unused;
        ReferenceAttention(qb, 1, lens[b] - 1, kvs[b], c.hq, c.hkv, dh, false, 1.0 / std::sqrt(double(dh)),
                           &refs[v][b], &lse_unused);
      }
    }
    DecodeParams p;
    p.batch = B;
    p.k_cache = dk.p;
    p.v_cache = dv.p;
    p.block_size = bs;
    p.block_tables = dtables.p;
    p.block_table_stride = stride;
    p.kv_lens = dlens.p;
    p.max_kv_len = lens[0];
    p.num_q_heads = c.hq;
    p.num_kv_heads = c.hkv;
    p.head_dim = dh;
    p.kernel = c.kernel;
    p.fresh_kv_tokens = 1;
    const size_t ws_bytes = DecodeWorkspaceBytes(B, c.hq, c.hkv, dh, lens[0], 0, c.kernel);
    ASSERT_GT(ws_bytes, 0u);
    DevBuf<unsigned char> ws(ws_bytes);
    ASSERT_CUDA(cudaMemset(ws.p, 0, ws_bytes));
    p.workspace = ws.p;
    p.workspace_bytes = ws_bytes;
    for (int fuse_min : {0, 1 << 30})
      for (int early : {0, 3})
        for (int comb : {-1, 0, 1, 2, 3, 4, 5}) {
          SCOPED_TRACE(testing::Message() << "hq " << c.hq << " hkv " << c.hkv << " kernel " << static_cast<int>(c.kernel)
                                          << " fuse_min " << fuse_min << " early_tiles " << early << " combine " << comb);
          p.fuse_min_split_keys = fuse_min;
          p.early_tiles = early;
          // -1: the kernel's own choices; else each trigger with each merge kernel.
          p.combine_trigger = comb < 0 ? -1 : comb % 3;
          p.combine_sliced = comb < 0 ? -1 : comb >= 3 ? 1 : 0;
          dout[0]->Poison();
          dout[1]->Poison();
          constexpr int kLaunches = 6;
          for (int i = 0; i < kLaunches; ++i) {
            p.q = dq[i % 2]->p;
            p.out = dout[i % 2]->p;
            absl::Status st = LaunchAttentionDecode(p, stream_);
            ASSERT_TRUE(st.ok()) << st;
          }
          ASSERT_CUDA(cudaStreamSynchronize(stream_));
          for (int v = 0; v < 2; ++v) {
            const auto got = dout[v]->Download();
            for (int b = 0; b < B; ++b) {
              SCOPED_TRACE(testing::Message() << "query " << v << " seq " << b);
              std::vector<uint16_t> gb(got.begin() + b * ha * dh, got.begin() + (b + 1) * ha * dh);
              Errors e = Compare(gb, refs[v][b], nullptr, nullptr);
              EXPECT_EQ(e.nonfinite, 0);
              EXPECT_LT(e.rel, 1e-2);
              EXPECT_LT(e.max_abs, 5e-2);
            }
          }
        }
  }
}

// DecodeParams::timeline (diagnostics): every CTA of a fused v6 launch stamps its phases in order
// and its SM, and the output is the same as without the stamps.
TEST_F(AttentionTest, DecodeTimelineStampsEveryCtaInOrder) {
  const int hq = 32, hkv = 1, dh = 128, bs = 64, splits = 8;
  const std::vector<int64_t> lens = {8192};
  PagedPool pool(hkv, dh, bs, lens, rng_);
  pool.Fill(0, lens[0], rng_);
  const int64_t stride = (lens[0] + bs - 1) / bs;
  std::vector<int32_t> tables(pool.tables[0].begin(), pool.tables[0].end());
  tables.resize(stride, -1);
  auto qh = RandomBf16(hq * dh, rng_);
  DevBuf<uint16_t> dq(qh.size()), dk(pool.k.size()), dv(pool.v.size()), dout(hq * dh);
  DevBuf<int32_t> dtables(tables.size()), dlens(1);
  dq.Upload(qh);
  dk.Upload(pool.k);
  dv.Upload(pool.v);
  dtables.Upload(tables);
  dlens.Upload(std::vector<int32_t>{static_cast<int32_t>(lens[0])});
  const size_t ws_bytes = DecodeWorkspaceBytes(1, hq, hkv, dh, lens[0], splits, DecodeKernel::kV6);
  DevBuf<unsigned char> ws(ws_bytes);
  ASSERT_CUDA(cudaMemset(ws.p, 0, ws_bytes));
  DecodeParams p;
  p.q = dq.p;
  p.batch = 1;
  p.k_cache = dk.p;
  p.v_cache = dv.p;
  p.block_size = bs;
  p.block_tables = dtables.p;
  p.block_table_stride = stride;
  p.kv_lens = dlens.p;
  p.max_kv_len = lens[0];
  p.num_q_heads = hq;
  p.num_kv_heads = hkv;
  p.head_dim = dh;
  p.out = dout.p;
  p.workspace = ws.p;
  p.workspace_bytes = ws_bytes;
  p.num_splits = splits;
  p.kernel = DecodeKernel::kV6;
  p.fuse_min_split_keys = 32;  // 1024 keys a split: fused on any GPU with >= 8 SMs
  ASSERT_EQ(DecodeSplits(p), splits);
  dout.Poison();
  ASSERT_TRUE(LaunchAttentionDecode(p, stream_).ok());
  ASSERT_CUDA(cudaStreamSynchronize(stream_));
  const auto plain = dout.Download();
  DevBuf<uint64_t> tl(splits * kDecodeTimelineSlots);
  ASSERT_CUDA(cudaMemset(tl.p, 0, splits * kDecodeTimelineSlots * sizeof(uint64_t)));
  p.timeline = tl.p;
  dout.Poison();
  ASSERT_TRUE(LaunchAttentionDecode(p, stream_).ok());
  ASSERT_CUDA(cudaStreamSynchronize(stream_));
  EXPECT_EQ(dout.Download(), plain);
  int sms = 0;
  ASSERT_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const auto t = tl.Download();
  int mergers = 0;
  for (int c = 0; c < splits; ++c) {
    SCOPED_TRACE(testing::Message() << "cta " << c);
    const uint64_t* e = t.data() + c * kDecodeTimelineSlots;
    for (int k : {kTlEntry, kTlWaited, kTlFirstTile, kTlLoopEnd, kTlStored, kTlExit}) EXPECT_NE(e[k], 0u) << k;
    EXPECT_LE(e[kTlEntry], e[kTlWaited]);
    EXPECT_LE(e[kTlWaited], e[kTlFirstTile]);
    EXPECT_LE(e[kTlFirstTile], e[kTlLoopEnd]);
    EXPECT_LE(e[kTlLoopEnd], e[kTlStored]);
    EXPECT_LE(e[kTlStored], e[kTlExit]);
    EXPECT_LT(e[kTlSm], static_cast<uint64_t>(sms));
    if (e[kTlMerge] != 0) {
      ++mergers;
      EXPECT_LE(e[kTlStored], e[kTlMerge]);
      EXPECT_LE(e[kTlMerge], e[kTlMergeLoaded]);
      EXPECT_LE(e[kTlMergeLoaded], e[kTlMergeCombined]);
      EXPECT_LE(e[kTlMergeCombined], e[kTlExit]);
    }
  }
  EXPECT_EQ(mergers, splits);  // min(splits, 32 rows x 4 slices) CTAs merge
}

TEST_F(AttentionTest, DecodeRejectsSmallWorkspace) {
  DecodeParams p;
  DevBuf<uint16_t> dummy(1024);
  DevBuf<int32_t> dint(16);
  p.q = p.k_cache = p.v_cache = p.out = dummy.p;
  p.block_tables = p.kv_lens = dint.p;
  p.batch = 1;
  p.max_kv_len = 100000;
  p.num_q_heads = p.num_kv_heads = 1;
  p.head_dim = 128;
  p.num_splits = 4;
  absl::Status st = LaunchAttentionDecode(p, stream_);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  p.head_dim = 96;
  EXPECT_EQ(LaunchAttentionDecode(p, stream_).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(AttentionTest, MergeMatchesFormula) {
  for (bool f32 : {false, true}) {
    for (int dh : {128, 64, 20}) {
      const int S = 5, n = 37, heads = 6;
      const int64_t rows = int64_t{n} * heads;
      std::vector<std::vector<float>> o(S);
      std::vector<std::vector<float>> lse(S);
      std::vector<DevBuf<uint16_t>*> bo16;
      std::vector<DevBuf<float>*> bo32, bl;
      std::normal_distribution<float> nd(0.f, 3.f);
      std::vector<const void*> outs;
      std::vector<const float*> lses;
      for (int s = 0; s < S; ++s) {
        o[s].resize(rows * dh);
        lse[s].resize(rows);
        std::vector<uint16_t> h16(rows * dh);
        for (int64_t i = 0; i < rows * dh; ++i) {
          h16[i] = ToBf16(nd(rng_));
          o[s][i] = FromBf16(h16[i]);
        }
        for (int64_t r = 0; r < rows; ++r) {
          // Row r % 7 == 0: every part empty; otherwise part s empty when (r + s) % 3 == 0.
          lse[s][r] = (r % 7 == 0 || (r + s) % 3 == 0) ? -INFINITY : nd(rng_);
        }
        bl.push_back(new DevBuf<float>(rows));
        bl.back()->Upload(lse[s]);
        lses.push_back(bl.back()->p);
        if (f32) {
          bo32.push_back(new DevBuf<float>(rows * dh));
          bo32.back()->Upload(o[s]);
          outs.push_back(bo32.back()->p);
        } else {
          bo16.push_back(new DevBuf<uint16_t>(rows * dh));
          bo16.back()->Upload(h16);
          outs.push_back(bo16.back()->p);
        }
      }
      DevBuf<uint16_t> dout(rows * dh);
      DevBuf<float> dlse(rows);
      dout.Poison();
      dlse.Poison();
      MergeParams mp;
      mp.outs = outs.data();
      mp.lses = lses.data();
      mp.num_parts = S;
      mp.part_type = f32 ? PartialType::kF32 : PartialType::kBF16;
      mp.n = n;
      mp.heads = heads;
      mp.head_dim = dh;
      mp.out = dout.p;
      mp.lse_out = dlse.p;
      ASSERT_TRUE(LaunchAttentionMerge(mp, stream_).ok());
      ASSERT_CUDA(cudaStreamSynchronize(stream_));
      std::vector<double> ref(rows * dh, 0.0), ref_lse(rows, -INFINITY);
      for (int64_t r = 0; r < rows; ++r) {
        double m = -INFINITY;
        for (int s = 0; s < S; ++s) m = std::max<double>(m, lse[s][r]);
        if (std::isinf(m)) continue;
        double sum = 0;
        for (int s = 0; s < S; ++s) sum += std::exp(lse[s][r] - m);
        const double L = m + std::log(sum);
        ref_lse[r] = L;
        for (int s = 0; s < S; ++s) {
          const double w = std::exp(lse[s][r] - L);
          for (int d = 0; d < dh; ++d) ref[r * dh + d] += w * o[s][r * dh + d];
        }
      }
      auto got = dout.Download();
      auto got_lse = dlse.Download();
      Errors e = Compare(got, ref, &got_lse, &ref_lse);
      EXPECT_EQ(e.nonfinite, 0) << "f32=" << f32 << " dh=" << dh;
      EXPECT_LT(e.rel, 5e-3) << "f32=" << f32 << " dh=" << dh;
      EXPECT_LT(e.lse_max, 1e-4) << "f32=" << f32 << " dh=" << dh;
      for (auto* b : bo16) delete b;
      for (auto* b : bo32) delete b;
      for (auto* b : bl) delete b;
    }
  }
}

TEST_F(AttentionTest, PrefillRejectsBadShapes) {
  PrefillParams p;
  p.head_dim = 80;
  p.num_q_heads = p.num_kv_heads = 4;
  EXPECT_EQ(LaunchAttentionPrefill(p, stream_).code(), absl::StatusCode::kInvalidArgument);
  p.head_dim = 128;
  p.num_q_heads = 6;
  EXPECT_EQ(LaunchAttentionPrefill(p, stream_).code(), absl::StatusCode::kInvalidArgument);
  p.num_q_heads = 4;
  p.n = 10;
  p.kv_len = 5;
  EXPECT_EQ(LaunchAttentionPrefill(p, stream_).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sqa::cuda
