// CPU backend elementwise/GEMM ops against naive float64 versions, weight upload, and errors.
#include "workers/engine/cpu/cpu_backend.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace sqa {
namespace {

TensorView View(std::vector<float>& v, std::vector<int64_t> shape) {
  TensorView t;
  t.data = v.data();
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  return t;
}

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

class CpuBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto be = CreateCpuBackend(BackendOptions{});
    ASSERT_TRUE(be.ok());
    be_ = std::move(be).value();
  }
  std::unique_ptr<Backend> be_;
};

TEST_F(CpuBackendTest, NameAndDtype) {
  EXPECT_EQ(be_->name(), "cpu");
  EXPECT_EQ(be_->act_dtype(), DType::kF32);
  BackendOptions bad;
  bad.num_threads = -1;
  EXPECT_FALSE(CreateCpuBackend(bad).ok());
}

TEST_F(CpuBackendTest, LinearIsXTimesWTransposed) {
  const int64_t n = 37, in = 53, out = 29;
  auto x = Random(n * in, 1), w = Random(out * in, 2);
  std::vector<float> y(n * out);
  ASSERT_TRUE(be_->Linear(View(x, {n, in}), View(w, {out, in}), View(y, {n, out})).ok());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t k = 0; k < in; ++k) s += static_cast<double>(x[i * in + k]) * w[o * in + k];
      EXPECT_NEAR(y[i * out + o], s, 1e-4);
    }
  EXPECT_EQ(be_->Linear(View(x, {n, in}), View(w, {in, out}), View(y, {n, out})).code(),
            absl::StatusCode::kInvalidArgument);
}

// Sizes that take the threaded paths: row chunks (many rows) and output-feature chunks through
// the small-row kernel (few rows), with feature counts that are not multiples of 16.
TEST_F(CpuBackendTest, LinearLargeShapesMatchNaive) {
  struct Shape {
    int64_t n, in, out;
  };
  for (const Shape& sh : {Shape{300, 256, 203}, Shape{5, 2050, 1030}, Shape{17, 300, 900}}) {
    auto x = Random(sh.n * sh.in, 11), w = Random(sh.out * sh.in, 12);
    std::vector<float> y(sh.n * sh.out);
    ASSERT_TRUE(be_->Linear(View(x, {sh.n, sh.in}), View(w, {sh.out, sh.in}), View(y, {sh.n, sh.out})).ok());
    double err = 0;
    for (int64_t i = 0; i < sh.n; ++i)
      for (int64_t o = 0; o < sh.out; ++o) {
        double s = 0;
        for (int64_t k = 0; k < sh.in; ++k) s += static_cast<double>(x[i * sh.in + k]) * w[o * sh.in + k];
        err = std::max(err, std::abs(y[i * sh.out + o] - s));
      }
    EXPECT_LT(err, 1e-3) << sh.n << "x" << sh.in << "x" << sh.out;
  }
}

TEST_F(CpuBackendTest, RmsNorm) {
  const int64_t n = 5, d = 96;
  auto x = Random(n * d, 3), w = Random(d, 4);
  std::vector<float> y(n * d);
  ASSERT_TRUE(be_->RmsNorm(View(x, {n, d}), View(w, {d}), 1e-5f, View(y, {n, d})).ok());
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(x[i * d + j]) * x[i * d + j];
    const double inv = 1.0 / std::sqrt(ss / d + 1e-5);
    for (int64_t j = 0; j < d; ++j) EXPECT_NEAR(y[i * d + j], x[i * d + j] * inv * w[j], 1e-5);
  }
}

TEST_F(CpuBackendTest, RopeRotateHalf) {
  const int64_t n = 4, heads = 3, dh = 8;
  auto x = Random(n * heads * dh, 5);
  auto orig = x;
  std::vector<int32_t> pos = {0, 1, 17, 1000};
  RopeArgs r;
  r.theta = 10000.0;
  r.position_scale = 2.0;
  ASSERT_TRUE(be_->Rope(View(x, {n, heads, dh}), pos.data(), r).ok());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t j = 0; j < dh / 2; ++j) {
        const double ang = pos[i] / 2.0 * std::pow(10000.0, -2.0 * j / dh);
        const float* o = &orig[(i * heads + h) * dh];
        const float* g = &x[(i * heads + h) * dh];
        EXPECT_NEAR(g[j], o[j] * std::cos(ang) - o[j + dh / 2] * std::sin(ang), 1e-5);
        EXPECT_NEAR(g[j + dh / 2], o[j + dh / 2] * std::cos(ang) + o[j] * std::sin(ang), 1e-5);
      }
  std::vector<int32_t> neg = {0, -1, 0, 0};
  EXPECT_FALSE(be_->Rope(View(x, {n, heads, dh}), neg.data(), r).ok());
}

// The fused layer ops' defaults (Backend::LinearMany, LinearSwiGlu, AddRmsNorm, RopeQK) give what
// the unfused ops give, exactly, and reject mismatched arguments.
TEST_F(CpuBackendTest, FusedOpDefaultsMatchTheUnfusedOps) {
  const int64_t n = 3, d = 24, hq = 2, hk = 1, dh = 8, inter = 10;
  auto x = Random(n * d, 11), wq = Random(hq * dh * d, 12), wk = Random(hk * dh * d, 13), wv = Random(hk * dh * d, 14);
  std::vector<float> q(n * hq * dh), k(n * hk * dh), v(n * hk * dh), q2 = q, k2 = k, v2 = v;
  const TensorView ws[3] = {View(wq, {hq * dh, d}), View(wk, {hk * dh, d}), View(wv, {hk * dh, d})};
  const TensorView outs[3] = {View(q, {n, hq * dh}), View(k, {n, hk * dh}), View(v, {n, hk * dh})};
  ASSERT_TRUE(be_->LinearMany(View(x, {n, d}), ws, outs).ok());
  ASSERT_TRUE(be_->Linear(View(x, {n, d}), ws[0], View(q2, {n, hq * dh})).ok());
  ASSERT_TRUE(be_->Linear(View(x, {n, d}), ws[1], View(k2, {n, hk * dh})).ok());
  ASSERT_TRUE(be_->Linear(View(x, {n, d}), ws[2], View(v2, {n, hk * dh})).ok());
  EXPECT_EQ(q, q2);
  EXPECT_EQ(k, k2);
  EXPECT_EQ(v, v2);
  EXPECT_EQ(be_->LinearMany(View(x, {n, d}), ws, absl::MakeConstSpan(outs, 2)).code(),
            absl::StatusCode::kInvalidArgument);

  std::vector<int32_t> pos = {0, 5, 700};
  RopeArgs r;
  ASSERT_TRUE(be_->RopeQK(View(q, {n, hq, dh}), View(k, {n, hk, dh}), pos.data(), r).ok());
  ASSERT_TRUE(be_->Rope(View(q2, {n, hq, dh}), pos.data(), r).ok());
  ASSERT_TRUE(be_->Rope(View(k2, {n, hk, dh}), pos.data(), r).ok());
  EXPECT_EQ(q, q2);
  EXPECT_EQ(k, k2);

  auto wg = Random(inter * d, 15), wu = Random(inter * d, 16);
  std::vector<float> gate(n * inter), up(n * inter), out(n * inter), gate2 = gate, up2 = up, out2 = out;
  ASSERT_TRUE(be_->LinearSwiGlu(View(x, {n, d}), View(wg, {inter, d}), View(wu, {inter, d}), View(gate, {n, inter}),
                                View(up, {n, inter}), View(out, {n, inter}))
                  .ok());
  ASSERT_TRUE(be_->Linear(View(x, {n, d}), View(wg, {inter, d}), View(gate2, {n, inter})).ok());
  ASSERT_TRUE(be_->Linear(View(x, {n, d}), View(wu, {inter, d}), View(up2, {n, inter})).ok());
  ASSERT_TRUE(be_->SwiGlu(View(gate2, {n, inter}), View(up2, {n, inter}), View(out2, {n, inter})).ok());
  EXPECT_EQ(out, out2);

  auto h = Random(n * d, 17), y = Random(n * d, 18), nw = Random(d, 19);
  auto h2 = h;
  std::vector<float> nx(n * d), nx2(n * d);
  ASSERT_TRUE(be_->AddRmsNorm(View(h, {n, d}), View(y, {n, d}), View(nw, {d}), 1e-5f, View(nx, {n, d})).ok());
  ASSERT_TRUE(be_->AddInPlace(View(h2, {n, d}), View(y, {n, d})).ok());
  ASSERT_TRUE(be_->RmsNorm(View(h2, {n, d}), View(nw, {d}), 1e-5f, View(nx2, {n, d})).ok());
  EXPECT_EQ(h, h2);
  EXPECT_EQ(nx, nx2);
  // A bad shape in the second op is still reported.
  EXPECT_FALSE(be_->AddRmsNorm(View(h, {n, d}), View(y, {n, d}), View(nw, {d - 1}), 1e-5f, View(nx, {n, d})).ok());
}

TEST_F(CpuBackendTest, SwiGluAddGatherEmbed) {
  const int64_t n = 3, d = 37;  // not a multiple of 16: exercises the tail
  auto g = Random(n * d, 6), u = Random(n * d, 7);
  g[0] = -100.f;
  g[1] = 100.f;
  std::vector<float> o(n * d);
  ASSERT_TRUE(be_->SwiGlu(View(g, {n, d}), View(u, {n, d}), View(o, {n, d})).ok());
  for (int64_t i = 0; i < n * d; ++i) {
    const double want = g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i];
    EXPECT_NEAR(o[i], want, 1e-5 * std::max(1.0, std::abs(want)));
  }
  auto a = g;
  ASSERT_TRUE(be_->AddInPlace(View(a, {n, d}), View(u, {n, d})).ok());
  for (int64_t i = 0; i < n * d; ++i) EXPECT_EQ(a[i], g[i] + u[i]);
  std::vector<int64_t> rows = {2, 0};
  std::vector<float> sel(2 * d);
  ASSERT_TRUE(be_->GatherRows(View(g, {n, d}), rows.data(), 2, View(sel, {2, d})).ok());
  for (int64_t j = 0; j < d; ++j) {
    EXPECT_EQ(sel[j], g[2 * d + j]);
    EXPECT_EQ(sel[d + j], g[j]);
  }
  rows[0] = 3;
  EXPECT_FALSE(be_->GatherRows(View(g, {n, d}), rows.data(), 2, View(sel, {2, d})).ok());
  std::vector<int32_t> toks = {1, 1, 0};
  std::vector<float> e(n * d);
  ASSERT_TRUE(be_->Embed(View(g, {n, d}), toks.data(), 3, View(e, {n, d})).ok());
  EXPECT_EQ(e[0], g[d]);
  EXPECT_EQ(e[2 * d], g[0]);
  toks[1] = 3;
  auto st = be_->Embed(View(g, {n, d}), toks.data(), 3, View(e, {n, d}));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CpuBackendTest, UploadWeightF32InPlaceBf16Converted) {
  std::vector<float> w = {1.f, -2.f, 3.5f, 0.25f};
  TensorView v = View(w, {2, 2});
  auto up = be_->UploadWeight(v);
  ASSERT_TRUE(up.ok());
  EXPECT_EQ(up->view.data, w.data());  // no copy
  EXPECT_EQ(up->storage, nullptr);
  std::vector<uint16_t> b(w.size());
  for (size_t i = 0; i < w.size(); ++i) b[i] = F32ToBf16(w[i]);
  TensorView bv;
  bv.data = b.data();
  bv.dtype = DType::kBF16;
  bv.shape = {2, 2};
  auto ub = be_->UploadWeight(bv);
  ASSERT_TRUE(ub.ok());
  EXPECT_EQ(ub->view.dtype, DType::kF32);
  ASSERT_NE(ub->storage, nullptr);
  for (size_t i = 0; i < w.size(); ++i) EXPECT_EQ(ub->view.as<float>()[i], w[i]);
  // Ops refuse non-f32 inputs instead of misreading them.
  std::vector<float> x(4), y(4);
  EXPECT_EQ(be_->Linear(View(x, {2, 2}), bv, View(y, {2, 2})).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CpuBackendTest, WriteKvRejectsBadSlots) {
  KvCacheShape s;
  s.num_layers = 1;
  s.num_blocks = 2;
  s.block_size = 4;
  s.num_kv_heads = 1;
  s.head_dim = 4;
  auto c = be_->CreateKvCache(s);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->bytes_per_block(), 2u * 4 * 4 * sizeof(float));
  std::vector<float> k(4), v(4);
  std::vector<int64_t> slot = {8};
  EXPECT_FALSE(be_->WriteKv(**c, 0, View(k, {1, 1, 4}), View(v, {1, 1, 4}), slot.data()).ok());
  slot[0] = 7;
  EXPECT_TRUE(be_->WriteKv(**c, 0, View(k, {1, 1, 4}), View(v, {1, 1, 4}), slot.data()).ok());
  EXPECT_FALSE(be_->WriteKv(**c, 1, View(k, {1, 1, 4}), View(v, {1, 1, 4}), slot.data()).ok());
  s.num_blocks = 0;
  EXPECT_FALSE(be_->CreateKvCache(s).ok());
}

}  // namespace
}  // namespace sqa
