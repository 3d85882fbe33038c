// CPU attention (prefill, decode, merge) against a naive float64 attention computed here, over
// every Hq/Hkv relationship (MHA, GQA, MQA, SQA, rSQA), head dims that are and are not multiples
// of 16, block sizes that do not divide the lengths, shuffled block tables, causal chunks with
// q_pos0 > 0, non-causal, decode batches of mixed lengths (long ones split across threads), and
// the LSE merge of disjoint key sets.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "workers/engine/cpu/cpu_backend.h"

namespace sqa {
namespace {

constexpr double kTol = 1e-5;

TensorView View(std::vector<float>& v, std::vector<int64_t> shape) {
  TensorView t;
  t.data = v.data();
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  return t;
}

std::vector<float> Random(size_t n, std::mt19937& rng, float scale = 1.f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// One sequence's keys/values on the host ([L][Hkv][dh]) and in the paged cache.
struct HostSeq {
  std::vector<float> k, v;
  std::vector<int32_t> table;
  int64_t len = 0;
};

class AttnFixture {
 public:
  AttnFixture(int64_t hkv, int64_t dh, int64_t bs, int64_t num_blocks, int64_t layer = 1)
      : hkv_(hkv), dh_(dh), bs_(bs), layer_(layer), rng_(hkv * 1000 + dh * 10 + bs) {
    auto be = CreateCpuBackend(BackendOptions{});
    EXPECT_TRUE(be.ok());
    be_ = std::move(be).value();
    KvCacheShape s;
    s.num_layers = 2;
    s.num_blocks = num_blocks;
    s.block_size = bs;
    s.num_kv_heads = hkv;
    s.head_dim = dh;
    auto c = be_->CreateKvCache(s);
    EXPECT_TRUE(c.ok());
    cache_ = std::move(c).value();
    free_.resize(static_cast<size_t>(num_blocks));
    std::iota(free_.begin(), free_.end(), 0);
    std::shuffle(free_.begin(), free_.end(), rng_);
    // Fill the other layer with garbage so that a wrong layer offset shows.
    std::vector<float> junk(static_cast<size_t>(bs * hkv * dh), std::numeric_limits<float>::quiet_NaN());
    std::vector<int64_t> slots(static_cast<size_t>(bs));
    for (int64_t b = 0; b < num_blocks; ++b) {
      for (int64_t i = 0; i < bs; ++i) slots[i] = b * bs + i;
      EXPECT_TRUE(be_->WriteKv(*cache_, 1 - layer, View(junk, {bs, hkv, dh}), View(junk, {bs, hkv, dh}), slots.data()).ok());
    }
  }

  HostSeq MakeSeq(int64_t len) {
    HostSeq s;
    s.len = len;
    s.k = Random(static_cast<size_t>(len * hkv_ * dh_), rng_);
    s.v = Random(static_cast<size_t>(len * hkv_ * dh_), rng_);
    const int64_t nb = (len + bs_ - 1) / bs_;
    for (int64_t i = 0; i < nb; ++i) {
      s.table.push_back(free_.back());
      free_.pop_back();
    }
    std::vector<int64_t> slots(static_cast<size_t>(len));
    for (int64_t p = 0; p < len; ++p) slots[p] = s.table[p / bs_] * bs_ + p % bs_;
    if (len > 0) {
      EXPECT_TRUE(be_->WriteKv(*cache_, layer_, View(s.k, {len, hkv_, dh_}), View(s.v, {len, hkv_, dh_}), slots.data()).ok());
    }
    return s;
  }

  Backend& be() { return *be_; }
  const KvCacheStorage* cache() const { return cache_.get(); }
  int64_t layer() const { return layer_; }
  std::mt19937& rng() { return rng_; }

 private:
  int64_t hkv_, dh_, bs_, layer_;
  std::mt19937 rng_;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<KvCacheStorage> cache_;
  std::vector<int32_t> free_;
};

// Naive float64 attention of queries q ([n][hq][dh], positions q_pos0..) over keys [k_lo, k_hi)
// of `s` (causal by absolute position when asked). out: [n][ha][dh], lse: [n][ha].
void Naive(const std::vector<float>& q, int64_t n, int64_t hq, int64_t hkv, int64_t dh, const HostSeq& s,
           int64_t k_lo, int64_t k_hi, int64_t q_pos0, bool causal, std::vector<double>* out, std::vector<double>* lse) {
  const int64_t ha = std::max(hq, hkv);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  out->assign(static_cast<size_t>(n * ha * dh), 0.0);
  lse->assign(static_cast<size_t>(n * ha), -std::numeric_limits<double>::infinity());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t h = 0; h < ha; ++h) {
      const int64_t qh = h % hq, kvh = h / (ha / hkv);
      const float* qv = &q[(i * hq + qh) * dh];
      std::vector<double> sc;
      std::vector<int64_t> idx;
      for (int64_t j = k_lo; j < k_hi; ++j) {
        if (causal && j > q_pos0 + i) continue;
        const float* kv = &s.k[(j * hkv + kvh) * dh];
        double d = 0;
        for (int64_t c = 0; c < dh; ++c) d += static_cast<double>(qv[c]) * kv[c];
        sc.push_back(d * scale);
        idx.push_back(j);
      }
      if (sc.empty()) continue;
      const double m = *std::max_element(sc.begin(), sc.end());
      double sum = 0;
      for (double& x : sc) sum += (x = std::exp(x - m));
      for (size_t t = 0; t < sc.size(); ++t) {
        const float* vv = &s.v[(idx[t] * hkv + kvh) * dh];
        for (int64_t c = 0; c < dh; ++c) (*out)[(i * ha + h) * dh + c] += sc[t] / sum * vv[c];
      }
      (*lse)[i * ha + h] = m + std::log(sum);
    }
  }
}

void ExpectClose(const std::vector<float>& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double mx = 0, err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_FALSE(std::isnan(got[i])) << what << " NaN at " << i;
    mx = std::max(mx, std::abs(want[i]));
    err = std::max(err, std::abs(got[i] - want[i]));
  }
  EXPECT_LE(err, kTol * std::max(mx, 1e-3)) << what << ": max abs err " << err << " vs max |ref| " << mx;
}

void ExpectLseClose(const std::vector<float>& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(want[i])) {
      EXPECT_TRUE(std::isinf(got[i]) && got[i] < 0) << what << " row " << i << " got " << got[i];
      continue;
    }
    EXPECT_NEAR(got[i], want[i], kTol * std::max(1.0, std::abs(want[i]))) << what << " row " << i;
  }
}

struct Layout {
  int64_t hq, hkv;
};
const Layout kLayouts[] = {{4, 4}, {8, 2}, {4, 1}, {2, 1}, {2, 4}, {1, 4}, {8, 8}};

TEST(CpuAttentionTest, PrefillMatchesNaiveForEveryLayout) {
  struct Case {
    int64_t dh, bs, q_pos0, n;
    bool causal;
  };
  const Case cases[] = {
      {64, 64, 0, 150, true},   // several tiles and query blocks
      {16, 7, 0, 40, true},     // block size not dividing anything
      {8, 16, 33, 20, true},    // a later chunk: q_pos0 > 0
      {24, 10, 57, 70, true},   // head_dim not a multiple of 16
      {128, 100, 5, 90, true},  // large head_dim, odd block size
      {32, 16, 0, 13, false},   // non-causal
      {64, 64, 130, 1, true},   // a single query at the end
  };
  for (const Layout& l : kLayouts) {
    for (const Case& c : cases) {
      const int64_t ha = std::max(l.hq, l.hkv);
      const int64_t kv_len = c.causal ? c.q_pos0 + c.n : c.q_pos0 + c.n + 17;
      AttnFixture fx(l.hkv, c.dh, c.bs, (kv_len + c.bs - 1) / c.bs + 3);
      HostSeq s = fx.MakeSeq(kv_len);
      std::vector<float> q = Random(static_cast<size_t>(c.n * l.hq * c.dh), fx.rng());
      std::vector<float> out(static_cast<size_t>(c.n * ha * c.dh), NAN), lse(static_cast<size_t>(c.n * ha), NAN);
      PrefillAttentionArgs a;
      a.cache = fx.cache();
      a.layer = fx.layer();
      a.q = View(q, {c.n, l.hq, c.dh});
      a.q_pos0 = c.q_pos0;
      a.kv = {s.table.data(), kv_len};
      a.causal = c.causal;
      a.out = View(out, {c.n, ha, c.dh});
      a.lse = lse.data();
      ASSERT_TRUE(fx.be().AttentionPrefill(a).ok());
      std::vector<double> want, want_lse;
      Naive(q, c.n, l.hq, l.hkv, c.dh, s, 0, kv_len, c.q_pos0, c.causal, &want, &want_lse);
      const std::string what = absl::StrCat("Hq=", l.hq, " Hkv=", l.hkv, " dh=", c.dh, " bs=", c.bs, " q_pos0=",
                                            c.q_pos0, " n=", c.n, c.causal ? " causal" : " full");
      ExpectClose(out, want, what);
      ExpectLseClose(lse, want_lse, what + " lse");
    }
  }
}

TEST(CpuAttentionTest, DecodeBatchOfMixedLengths) {
  const int64_t lens[] = {1, 5, 64, 130, 1000, 3, 9000};  // the long one takes the multithreaded path
  for (const Layout& l : kLayouts) {
    for (int64_t dh : {64, 40}) {
      const int64_t bs = 16, ha = std::max(l.hq, l.hkv), B = 7;
      int64_t blocks = 0;
      for (int64_t len : lens) blocks += (len + bs - 1) / bs;
      AttnFixture fx(l.hkv, dh, bs, blocks + 2);
      std::vector<HostSeq> seqs;
      for (int64_t len : lens) seqs.push_back(fx.MakeSeq(len));
      std::vector<float> q = Random(static_cast<size_t>(B * l.hq * dh), fx.rng());
      std::vector<float> out(static_cast<size_t>(B * ha * dh), NAN), lse(static_cast<size_t>(B * ha), NAN);
      DecodeAttentionArgs a;
      a.cache = fx.cache();
      a.layer = fx.layer();
      a.q = View(q, {B, l.hq, dh});
      for (const HostSeq& s : seqs) a.seqs.push_back({s.table.data(), s.len});
      a.out = View(out, {B, ha, dh});
      a.lse = lse.data();
      ASSERT_TRUE(fx.be().AttentionDecode(a).ok());
      for (int64_t b = 0; b < B; ++b) {
        std::vector<float> qb(q.begin() + b * l.hq * dh, q.begin() + (b + 1) * l.hq * dh);
        std::vector<double> want, want_lse;
        Naive(qb, 1, l.hq, l.hkv, dh, seqs[b], 0, seqs[b].len, 0, false, &want, &want_lse);
        std::vector<float> ob(out.begin() + b * ha * dh, out.begin() + (b + 1) * ha * dh);
        std::vector<float> lb(lse.begin() + b * ha, lse.begin() + (b + 1) * ha);
        const std::string what = absl::StrCat("Hq=", l.hq, " Hkv=", l.hkv, " dh=", dh, " seq ", b, " len ", seqs[b].len);
        ExpectClose(ob, want, what);
        ExpectLseClose(lb, want_lse, what + " lse");
      }
    }
  }
}

TEST(CpuAttentionTest, DecodeEqualsLastRowOfPrefill) {
  AttnFixture fx(2, 64, 64, 40);
  const int64_t len = 777, hq = 8, ha = 8, dh = 64;
  HostSeq s = fx.MakeSeq(len);
  std::vector<float> q = Random(static_cast<size_t>(hq * dh), fx.rng());
  std::vector<float> o1(ha * dh), o2(ha * dh), l1(ha), l2(ha);
  PrefillAttentionArgs p;
  p.cache = fx.cache();
  p.layer = fx.layer();
  p.q = View(q, {1, hq, dh});
  p.q_pos0 = len - 1;
  p.kv = {s.table.data(), len};
  p.out = View(o1, {1, ha, dh});
  p.lse = l1.data();
  ASSERT_TRUE(fx.be().AttentionPrefill(p).ok());
  DecodeAttentionArgs d;
  d.cache = fx.cache();
  d.layer = fx.layer();
  d.q = View(q, {1, hq, dh});
  d.seqs = {{s.table.data(), len}};
  d.out = View(o2, {1, ha, dh});
  d.lse = l2.data();
  ASSERT_TRUE(fx.be().AttentionDecode(d).ok());
  for (int64_t i = 0; i < ha * dh; ++i) EXPECT_NEAR(o1[i], o2[i], 1e-5);
  for (int64_t i = 0; i < ha; ++i) EXPECT_NEAR(l1[i], l2[i], 1e-5);
}

// Split the keys into disjoint block-aligned parts (plus an empty one), attend to each part
// separately (non-causal), merge with LSE: equals attending to all keys.
TEST(CpuAttentionTest, MergeOfDisjointPartsEqualsFull) {
  for (const Layout& l : kLayouts) {
    const int64_t bs = 16, dh = 32, n = 9, ha = std::max(l.hq, l.hkv);
    const int64_t len = 3 * bs + 11;
    AttnFixture fx(l.hkv, dh, bs, 8);
    HostSeq s = fx.MakeSeq(len);
    std::vector<float> q = Random(static_cast<size_t>(n * l.hq * dh), fx.rng(), 2.f);
    // parts: blocks [0,1), [1,3), [3,4) and an empty part
    struct Part {
      int64_t first_block, kv_len;
    };
    const Part parts[] = {{0, bs}, {1, 2 * bs}, {3, 11}, {0, 0}};
    std::vector<std::vector<float>> outs, lses;
    for (const Part& pt : parts) {
      std::vector<float> o(static_cast<size_t>(n * ha * dh), NAN), ls(static_cast<size_t>(n * ha), NAN);
      PrefillAttentionArgs a;
      a.cache = fx.cache();
      a.layer = fx.layer();
      a.q = View(q, {n, l.hq, dh});
      a.kv = {s.table.data() + pt.first_block, pt.kv_len};
      a.causal = false;
      a.out = View(o, {n, ha, dh});
      a.lse = ls.data();
      ASSERT_TRUE(fx.be().AttentionPrefill(a).ok());
      outs.push_back(std::move(o));
      lses.push_back(std::move(ls));
    }
    for (float x : lses.back()) EXPECT_TRUE(std::isinf(x) && x < 0);  // empty part: -inf
    std::vector<TensorView> views;
    std::vector<const float*> lptr;
    for (size_t i = 0; i < outs.size(); ++i) {
      views.push_back(View(outs[i], {n, ha, dh}));
      lptr.push_back(lses[i].data());
    }
    std::vector<float> merged(static_cast<size_t>(n * ha * dh), NAN), mlse(static_cast<size_t>(n * ha), NAN);
    ASSERT_TRUE(fx.be().MergeAttention(views, lptr, View(merged, {n, ha, dh}), mlse.data()).ok());
    std::vector<double> want, want_lse;
    Naive(q, n, l.hq, l.hkv, dh, s, 0, len, 0, false, &want, &want_lse);
    const std::string what = absl::StrCat("merge Hq=", l.hq, " Hkv=", l.hkv);
    ExpectClose(merged, want, what);
    ExpectLseClose(mlse, want_lse, what + " lse");
  }
}

TEST(CpuAttentionTest, MergeOfOnlyEmptyPartsIsZeroWithMinusInfLse) {
  auto be = CreateCpuBackend(BackendOptions{});
  ASSERT_TRUE(be.ok());
  std::vector<float> a(8, NAN), b(8, 1.f), out(8, NAN);
  std::vector<float> la(2, -INFINITY), lb(2, -INFINITY), lo(2, 0.f);
  std::vector<TensorView> views = {View(a, {2, 1, 4}), View(b, {2, 1, 4})};
  std::vector<const float*> l = {la.data(), lb.data()};
  ASSERT_TRUE((*be)->MergeAttention(views, l, View(out, {2, 1, 4}), lo.data()).ok());
  for (float x : out) EXPECT_EQ(x, 0.f);
  for (float x : lo) EXPECT_TRUE(std::isinf(x) && x < 0);
  // A NaN output next to an empty (-inf) LSE must not leak into the merge.
  la = {0.5f, -INFINITY};
  a = {1, 2, 3, 4, NAN, NAN, NAN, NAN};
  lb = {-INFINITY, 0.25f};
  ASSERT_TRUE((*be)->MergeAttention(views, l, View(out, {2, 1, 4}), lo.data()).ok());
  EXPECT_EQ(out, (std::vector<float>{1, 2, 3, 4, 1, 1, 1, 1}));
  EXPECT_FLOAT_EQ(lo[0], 0.5f);
  EXPECT_FLOAT_EQ(lo[1], 0.25f);
}

TEST(CpuAttentionTest, RejectsBadShapes) {
  AttnFixture fx(2, 16, 16, 4);
  HostSeq s = fx.MakeSeq(20);
  std::vector<float> q(3 * 3 * 16), out(3 * 3 * 16);
  PrefillAttentionArgs a;
  a.cache = fx.cache();
  a.layer = fx.layer();
  a.q = View(q, {3, 3, 16});  // 3 query heads with 2 KV heads: neither divides the other
  a.kv = {s.table.data(), 20};
  a.q_pos0 = 17;
  a.out = View(out, {3, 3, 16});
  EXPECT_EQ(fx.be().AttentionPrefill(a).code(), absl::StatusCode::kInvalidArgument);
  a.q = View(q, {3, 2, 16});
  a.out = View(out, {3, 2, 16});
  a.q_pos0 = 18;  // kv_len 20 < 18 + 3: the queries' own keys are missing
  EXPECT_EQ(fx.be().AttentionPrefill(a).code(), absl::StatusCode::kInvalidArgument);
  a.q_pos0 = 17;
  EXPECT_TRUE(fx.be().AttentionPrefill(a).ok());
  std::vector<int32_t> bad = {0, 99};
  a.kv = {bad.data(), 20};
  EXPECT_EQ(fx.be().AttentionPrefill(a).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sqa
