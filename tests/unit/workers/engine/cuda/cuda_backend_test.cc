// Every op of the CUDA backend against the CPU backend on the same (bf16-exact) random inputs,
// fresh per test; CUDA outputs are poisoned with NaN before each op so unwritten elements fail.
// Tolerance: bf16 outputs, so relative 1e-2 of the reference's max |value| (GEMMs and attention
// accumulate in fp32 on both sides). Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "workers/engine/backend.h"
#include "workers/engine/cpu/cpu_backend.h"
#include "workers/engine/cuda/cuda_backend.h"
#include "workers/engine/cuda/skinny_gemm.h"
#include "workers/engine/model/tensor.h"
#include "workers/engine/sampling.h"

namespace sqa {
namespace {

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
    BackendOptions o;
    o.device = DeviceKind::kCuda;
    auto g = CreateCudaBackend(o);
    ASSERT_TRUE(g.ok()) << g.status();
    gpu_ = std::move(g).value();
    o.device = DeviceKind::kCpu;
    auto c = CreateCpuBackend(o);
    ASSERT_TRUE(c.ok()) << c.status();
    cpu_ = std::move(c).value();
    rng_.seed(std::random_device{}());
  }

  // Random values rounded to bf16, so both backends see identical inputs.
  std::vector<float> Random(size_t n, float scale = 1.f) {
    std::normal_distribution<float> d(0.f, scale);
    std::vector<float> v(n);
    for (float& x : v) x = Bf16ToF32(F32ToBf16(d(rng_)));
    return v;
  }

  // A tensor on backend `be` of its act dtype (or `dtype`) holding `host`.
  struct T {
    std::unique_ptr<DeviceBuffer> buf;
    TensorView view;
  };
  T Make(Backend& be, std::vector<int64_t> shape, const std::vector<float>* host, DType dtype) {
    T t;
    auto b = be.AllocTensor(shape, &t.view, dtype);
    EXPECT_TRUE(b.ok()) << b.status();
    t.buf = std::move(b).value();
    std::vector<float> fill;
    if (host == nullptr) {  // poison
      fill.assign(static_cast<size_t>(t.view.numel()), std::numeric_limits<float>::quiet_NaN());
      host = &fill;
    }
    EXPECT_EQ(static_cast<int64_t>(host->size()), t.view.numel());
    if (dtype == DType::kBF16) {
      std::vector<uint16_t> h(host->size());
      for (size_t i = 0; i < h.size(); ++i) h[i] = F32ToBf16((*host)[i]);
      EXPECT_TRUE(be.CopyFromHost(h.data(), t.view).ok());
    } else {
      EXPECT_TRUE(be.CopyFromHost(host->data(), t.view).ok());
    }
    return t;
  }
  T Gpu(std::vector<int64_t> shape, const std::vector<float>* host, DType dtype = DType::kBF16) {
    return Make(*gpu_, std::move(shape), host, dtype);
  }
  T Cpu(std::vector<int64_t> shape, const std::vector<float>* host) {
    return Make(*cpu_, std::move(shape), host, DType::kF32);
  }

  std::vector<float> Read(Backend& be, const TensorView& v) {
    std::vector<float> out(static_cast<size_t>(v.numel()));
    if (v.dtype == DType::kBF16) {
      std::vector<uint16_t> h(out.size());
      EXPECT_TRUE(be.CopyToHost(v, h.data()).ok());
      for (size_t i = 0; i < h.size(); ++i) out[i] = Bf16ToF32(h[i]);
    } else {
      EXPECT_TRUE(be.CopyToHost(v, out.data()).ok());
    }
    EXPECT_TRUE(be.Synchronize().ok());
    return out;
  }

  // max |got - want| <= rel * max |want| (+ a floor), and no NaN anywhere.
  static void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double rel,
                          const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    double max_ref = 0, max_err = 0;
    size_t worst = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_FALSE(std::isnan(got[i])) << what << ": element " << i << " not written (NaN)";
      max_ref = std::max(max_ref, std::fabs(static_cast<double>(want[i])));
      const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
      if (e > max_err) max_err = e, worst = i;
    }
    EXPECT_LE(max_err, rel * max_ref + 1e-6) << what << ": worst element " << worst << " got " << got[worst]
                                             << " want " << want[worst] << " (max |ref| " << max_ref << ")";
  }

  // x [n, in] times two weights w, w2 [out, in] (fresh bf16-exact values) and the CPU backend's
  // references: Linear of each, LinearSwiGlu with gate w and up w2.
  struct Proj {
    int64_t n = 0, in = 0, out = 0;
    std::vector<float> x, w, w2, want, want2, want_glu;
  };
  Proj MakeProj(int64_t n, int64_t in, int64_t out) {
    Proj p{n, in, out, Random(n * in), Random(out * in, 1.f / std::sqrt(static_cast<float>(in))),
           Random(out * in, 1.f / std::sqrt(static_cast<float>(in))), {}, {}, {}};
    auto cw = cpu_->UploadWeight({p.w.data(), DType::kF32, MemSpace::kHost, {out, in}});
    auto cw2 = cpu_->UploadWeight({p.w2.data(), DType::kF32, MemSpace::kHost, {out, in}});
    EXPECT_TRUE(cw.ok() && cw2.ok());
    if (!cw.ok() || !cw2.ok()) return p;
    T cx = Cpu({n, in}, &p.x), co = Cpu({n, out}, nullptr), co2 = Cpu({n, out}, nullptr), cg = Cpu({n, out}, nullptr),
      cu = Cpu({n, out}, nullptr), cs = Cpu({n, out}, nullptr);
    EXPECT_TRUE(cpu_->Linear(cx.view, cw->view, co.view).ok());
    EXPECT_TRUE(cpu_->Linear(cx.view, cw2->view, co2.view).ok());
    EXPECT_TRUE(cpu_->LinearSwiGlu(cx.view, cw->view, cw2->view, cg.view, cu.view, cs.view).ok());
    p.want = Read(*cpu_, co.view);
    p.want2 = Read(*cpu_, co2.view);
    p.want_glu = Read(*cpu_, cs.view);
    return p;
  }
  // The same projections on backend `be` (every output poisoned first): Linear of w with f32 and
  // bf16 out and of w2, LinearMany of both, LinearMany of each alone, LinearSwiGlu.
  struct ProjOut {
    std::vector<float> linear_f32, linear[2], many[2], alone[2], glu;
  };
  void RunProj(Backend& be, const Proj& p, ProjOut* o) {
    const int64_t n = p.n, in = p.in, out = p.out;
    auto gw = be.UploadWeight({const_cast<float*>(p.w.data()), DType::kF32, MemSpace::kHost, {out, in}});
    auto gw2 = be.UploadWeight({const_cast<float*>(p.w2.data()), DType::kF32, MemSpace::kHost, {out, in}});
    ASSERT_TRUE(gw.ok() && gw2.ok());
    auto bf = [&] { return Make(be, {n, out}, nullptr, DType::kBF16); };
    T gx = Make(be, {n, in}, &p.x, DType::kBF16), of = Make(be, {n, out}, nullptr, DType::kF32), l0 = bf(), l1 = bf(),
      m0 = bf(), m1 = bf(), a0 = bf(), a1 = bf(), gate = bf(), up = bf(), sw = bf();
    const TensorView ws[2] = {gw->view, gw2->view}, ms[2] = {m0.view, m1.view}, ls[2] = {l0.view, l1.view},
                     as[2] = {a0.view, a1.view};
    ASSERT_TRUE(be.Linear(gx.view, gw->view, of.view).ok());
    for (int k = 0; k < 2; ++k) ASSERT_TRUE(be.Linear(gx.view, ws[k], ls[k]).ok());
    ASSERT_TRUE(be.LinearMany(gx.view, ws, ms).ok());
    for (int k = 0; k < 2; ++k) ASSERT_TRUE(be.LinearMany(gx.view, absl::MakeConstSpan(&ws[k], 1), absl::MakeConstSpan(&as[k], 1)).ok());
    ASSERT_TRUE(be.LinearSwiGlu(gx.view, gw->view, gw2->view, gate.view, up.view, sw.view).ok());
    o->linear_f32 = Read(be, of.view);
    for (int k = 0; k < 2; ++k) {
      o->linear[k] = Read(be, ls[k]);
      o->many[k] = Read(be, ms[k]);
      o->alone[k] = Read(be, as[k]);
    }
    o->glu = Read(be, sw.view);
  }
  // Elements whose bits differ.
  static size_t BitsDiffer(const std::vector<float>& a, const std::vector<float>& b) {
    EXPECT_EQ(a.size(), b.size());
    size_t differ = 0;
    for (size_t e = 0; e < std::min(a.size(), b.size()); ++e) differ += std::memcmp(&a[e], &b[e], sizeof(float)) != 0;
    return differ;
  }

  std::unique_ptr<Backend> gpu_, cpu_;
  std::mt19937 rng_;
};

TEST_F(CudaBackendTest, DeviceCountAndName) {
  EXPECT_GT(CudaDeviceCount(), 0);
  EXPECT_EQ(gpu_->name(), "cuda:0");
  EXPECT_EQ(gpu_->act_dtype(), DType::kBF16);
  BackendOptions o;
  o.device = DeviceKind::kCuda;
  o.gpu_index = CudaDeviceCount();
  EXPECT_EQ(CreateCudaBackend(o).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(CudaBackendTest, UploadWeightConvertsEveryDiskType) {
  for (DType disk : {DType::kF32, DType::kF16, DType::kBF16}) {
    const int64_t rows = 37, cols = 129;
    std::vector<float> vals = Random(rows * cols);
    std::vector<uint16_t> half(vals.size());
    TensorView host;
    host.dtype = disk;
    host.shape = {rows, cols};
    if (disk == DType::kF32) {
      host.data = vals.data();
    } else {
      for (size_t i = 0; i < vals.size(); ++i) half[i] = disk == DType::kF16 ? F32ToF16(vals[i]) : F32ToBf16(vals[i]);
      host.data = half.data();
    }
    auto w = gpu_->UploadWeight(host);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ(w->view.dtype, DType::kBF16);
    EXPECT_EQ(w->view.space, MemSpace::kDevice);
    std::vector<float> got = Read(*gpu_, w->view);
    ExpectClose(got, vals, 8e-3, std::string("upload ") + std::string(DTypeName(disk)));
  }
  // Rank-1 weights (norm scales) stay f32.
  std::vector<float> norm = Random(100);
  TensorView host{norm.data(), DType::kF32, MemSpace::kHost, {100}};
  auto w = gpu_->UploadWeight(host);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->view.dtype, DType::kF32);
  ExpectClose(Read(*gpu_, w->view), norm, 0, "norm upload");
}

// d = 520 takes the 16-byte vector kernels, d = 130 the scalar ones.
TEST_F(CudaBackendTest, EmbedRmsNormAddSwiGlu) {
  for (int64_t d : {520, 130}) {
    SCOPED_TRACE("d=" + std::to_string(d));
    const int64_t vocab = 300, n = 77;
    std::vector<float> table = Random(vocab * d);
    std::vector<int32_t> tokens(n);
    std::uniform_int_distribution<int32_t> tok(0, vocab - 1);
    for (auto& t : tokens) t = tok(rng_);
    TensorView host_table{table.data(), DType::kF32, MemSpace::kHost, {vocab, d}};
    auto gt = gpu_->UploadWeight(host_table);
    auto ct = cpu_->UploadWeight(host_table);
    ASSERT_TRUE(gt.ok() && ct.ok());
    T ge = Gpu({n, d}, nullptr), ce = Cpu({n, d}, nullptr);
    ASSERT_TRUE(gpu_->Embed(gt->view, tokens.data(), n, ge.view).ok());
    ASSERT_TRUE(cpu_->Embed(ct->view, tokens.data(), n, ce.view).ok());
    ExpectClose(Read(*gpu_, ge.view), Read(*cpu_, ce.view), 0, "embed");
    // Out-of-range token: an error, not a crash.
    std::vector<int32_t> bad = {0, static_cast<int32_t>(vocab)};
    EXPECT_EQ(gpu_->Embed(gt->view, bad.data(), 2, Gpu({2, d}, nullptr).view).code(),
              absl::StatusCode::kInvalidArgument);

    std::vector<float> x = Random(n * d, 3.f), w = Random(d), y = Random(n * d);
    TensorView host_w{w.data(), DType::kF32, MemSpace::kHost, {d}};
    auto gw = gpu_->UploadWeight(host_w);
    auto cw = cpu_->UploadWeight(host_w);
    ASSERT_TRUE(gw.ok() && cw.ok());
    T gx = Gpu({n, d}, &x), cx = Cpu({n, d}, &x), go = Gpu({n, d}, nullptr), co = Cpu({n, d}, nullptr);
    ASSERT_TRUE(gpu_->RmsNorm(gx.view, gw->view, 1e-5f, go.view).ok());
    ASSERT_TRUE(cpu_->RmsNorm(cx.view, cw->view, 1e-5f, co.view).ok());
    ExpectClose(Read(*gpu_, go.view), Read(*cpu_, co.view), 1e-2, "rmsnorm");

    T gy = Gpu({n, d}, &y), cy = Cpu({n, d}, &y);
    ASSERT_TRUE(gpu_->AddInPlace(gx.view, gy.view).ok());
    ASSERT_TRUE(cpu_->AddInPlace(cx.view, cy.view).ok());
    ExpectClose(Read(*gpu_, gx.view), Read(*cpu_, cx.view), 1e-2, "add");

    T gs = Gpu({n, d}, nullptr), cs = Cpu({n, d}, nullptr);
    ASSERT_TRUE(gpu_->SwiGlu(gx.view, gy.view, gs.view).ok());
    ASSERT_TRUE(cpu_->SwiGlu(cx.view, cy.view, cs.view).ok());
    ExpectClose(Read(*gpu_, gs.view), Read(*cpu_, cs.view), 1e-2, "swiglu");
  }
}

TEST_F(CudaBackendTest, LinearBf16AndF32Outputs) {
  // Up to 8 rows with in % 8 == 0 take the skinny kernel (tails: in = 520 is 65 vectors, odd
  // feature counts leave a warp's second feature empty); in = 20 and more rows take cuBLASLt (one
  // weight stays on cuBLASLt from 9 rows: the skinny kernel's wide form serves only LinearMany).
  // `lt` is a second backend with the skinny kernel off: the same small shapes through cuBLASLt.
  BackendOptions lo;
  lo.device = DeviceKind::kCuda;
  lo.skinny_gemm = false;
  auto lt_or = CreateCudaBackend(lo);
  ASSERT_TRUE(lt_or.ok()) << lt_or.status();
  std::unique_ptr<Backend> lt = std::move(lt_or).value();
  for (auto [n, in, out] : {std::tuple<int64_t, int64_t, int64_t>{1, 256, 384}, {2, 520, 1000}, {3, 2048, 7},
                            {5, 136, 129}, {8, 5632, 300}, {9, 520, 1000}, {16, 5632, 300}, {24, 136, 129},
                            {32, 2048, 2048}, {1, 20, 9}, {33, 520, 1000}, {300, 1024, 96}}) {
    std::vector<float> x = Random(n * in), w = Random(out * in, 1.f / std::sqrt(static_cast<float>(in)));
    TensorView host_w{w.data(), DType::kF32, MemSpace::kHost, {out, in}};
    auto gw = gpu_->UploadWeight(host_w);
    auto cw = cpu_->UploadWeight(host_w);
    ASSERT_TRUE(gw.ok() && cw.ok());
    T gx = Gpu({n, in}, &x), cx = Cpu({n, in}, &x), co = Cpu({n, out}, nullptr);
    ASSERT_TRUE(cpu_->Linear(cx.view, cw->view, co.view).ok());
    const std::vector<float> want = Read(*cpu_, co.view);
    for (DType od : {DType::kBF16, DType::kF32}) {
      T go = Gpu({n, out}, nullptr, od);
      auto st = gpu_->Linear(gx.view, gw->view, go.view);
      ASSERT_TRUE(st.ok()) << st;
      // f32 output keeps the fp32 accumulator: tighter than bf16 rounding.
      const std::string what = "linear n=" + std::to_string(n) + " in=" + std::to_string(in) + " out=" +
                               std::to_string(out) + " " + std::string(DTypeName(od));
      ExpectClose(Read(*gpu_, go.view), want, od == DType::kF32 ? 2e-3 : 1e-2, what);
      if (n <= cuda::kSkinnyMaxRows) {
        auto lw = lt->UploadWeight(host_w);
        ASSERT_TRUE(lw.ok());
        T lx = Make(*lt, {n, in}, &x, DType::kBF16), lo_t = Make(*lt, {n, out}, nullptr, od);
        st = lt->Linear(lx.view, lw->view, lo_t.view);
        ASSERT_TRUE(st.ok()) << st;
        ExpectClose(Read(*lt, lo_t.view), want, od == DType::kF32 ? 2e-3 : 1e-2, what + " (cuBLASLt)");
      }
    }
    // Shape mismatch is an error.
    T bad = Gpu({n, out + 1}, nullptr);
    EXPECT_EQ(gpu_->Linear(gx.view, gw->view, bad.view).code(), absl::StatusCode::kInvalidArgument);
  }
}

// The skinny kernel's two CTA shapes (8 warps, two CTAs per SM; 16 warps, one per SM: what auto
// picks for a launch of at most one CTA per SM with K > 2048), each forced on its own backend:
// Linear (f32 and bf16 out), LinearMany and LinearSwiGlu against the CPU backend, and within one
// shape LinearMany's outputs equal to the last bit what Linear gives for each weight. Shapes on
// both sides of the SM count (out = 5632 is 352 CTAs), K tails (in = 520, 136), deep K (5632).
// For n > 8 LinearMany takes the wide form (the same on both backends) while Linear and
// LinearSwiGlu take cuBLASLt: LinearMany against the CPU and against Linear at bf16 tolerance, and
// each weight's LinearMany output equal to the last bit to a LinearMany of that weight alone (its
// split plan is its own); K split over 8 CTAs (out = 2048 and 300), 3 (out = 5632, in = 520)
// and not at all (in = 136).
TEST_F(CudaBackendTest, SkinnyCtaShapesMatchTheCpu) {
  std::unique_ptr<Backend> shaped[2];
  const char* names[2] = {"8", "16"};
  for (int i = 0; i < 2; ++i) {
    BackendOptions o;
    o.device = DeviceKind::kCuda;
    o.skinny_warps = names[i];
    auto b = CreateCudaBackend(o);
    ASSERT_TRUE(b.ok()) << b.status();
    shaped[i] = std::move(b).value();
  }
  BackendOptions bad;
  bad.device = DeviceKind::kCuda;
  bad.skinny_warps = "12";
  EXPECT_EQ(CreateCudaBackend(bad).status().code(), absl::StatusCode::kInvalidArgument);

  for (auto [n, in, out] : {std::tuple<int64_t, int64_t, int64_t>{1, 2048, 2048}, {3, 5632, 2048}, {8, 520, 5632},
                            {5, 136, 129}, {2, 2048, 300}, {12, 2048, 2048}, {32, 5632, 300}, {17, 520, 5632},
                            {25, 136, 129}}) {
    SCOPED_TRACE(testing::Message() << "n=" << n << " in=" << in << " out=" << out);
    const Proj p = MakeProj(n, in, out);
    for (int i = 0; i < 2; ++i) {
      ProjOut o;
      RunProj(*shaped[i], p, &o);
      if (HasFatalFailure()) return;
      const std::string what = std::string(names[i]) + " warps";
      if (n > cuda::kSkinnyNarrowMaxRows) {
        for (int k = 0; k < 2; ++k) {
          ExpectClose(o.many[k], o.alone[k], 0, what + ": LinearMany of two vs alone, weight " + std::to_string(k));
          ExpectClose(o.alone[k], k == 0 ? p.want : p.want2, 1e-2,
                      what + ": LinearMany vs CPU, weight " + std::to_string(k));
        }
      }
      ExpectClose(o.linear_f32, p.want, 2e-3, what + ": Linear f32 vs CPU");
      ExpectClose(o.linear[0], p.want, 1e-2, what + ": Linear bf16 vs CPU");
      ExpectClose(o.glu, p.want_glu, 1e-2, what + ": LinearSwiGlu vs CPU");
      for (int k = 0; k < 2 && n <= cuda::kSkinnyNarrowMaxRows; ++k) {
        const size_t differ = BitsDiffer(o.many[k], o.linear[k]);
        EXPECT_EQ(differ, 0u) << what << ": LinearMany output " << k << " differs from Linear in " << differ << " of "
                              << o.many[k].size() << " elements";
      }
    }
  }
}

// The skinny kernel's stream form (9-64 rows, in % 8 == 0; forced with skinny_stream "all"): Linear (f32 and
// bf16 out), LinearMany and LinearSwiGlu against the CPU backend; each weight's LinearMany output
// equal to the last bit to its Linear (a weight's split plan is its own); the same shapes with the
// default ("auto": the stream form where it is the faster choice) and with it off (cuBLASLt, and
// the wide form for LinearMany) against the CPU too. Shapes: one K stage (in = 64), K tails that TMA
// fills with zeros (in = 520, 136), feature tails (out = 8, 129, 300, 1000), K split 16 ways (2048 x
// 2048) and fewer (5632 deep), all four row-tile counts.
TEST_F(CudaBackendTest, StreamFormMatchesTheCpu) {
  BackendOptions all;
  all.device = DeviceKind::kCuda;
  all.skinny_stream = "all";
  auto st_or = CreateCudaBackend(all);
  ASSERT_TRUE(st_or.ok()) << st_or.status();
  std::unique_ptr<Backend> sb = std::move(st_or).value();
  BackendOptions off = all;
  off.skinny_stream = "off";
  auto lt_or = CreateCudaBackend(off);
  ASSERT_TRUE(lt_or.ok()) << lt_or.status();
  std::unique_ptr<Backend> lt = std::move(lt_or).value();
  BackendOptions bad = all;
  bad.skinny_stream = "sometimes";
  EXPECT_EQ(CreateCudaBackend(bad).status().code(), absl::StatusCode::kInvalidArgument);

  for (auto [n, in, out] : {std::tuple<int64_t, int64_t, int64_t>{9, 2048, 2048}, {16, 512, 300}, {33, 5632, 2048},
                            {48, 1024, 129}, {64, 2048, 5632}, {64, 64, 8}, {20, 128, 2048}, {24, 520, 1000},
                            {57, 136, 300}}) {
    SCOPED_TRACE(testing::Message() << "n=" << n << " in=" << in << " out=" << out);
    const Proj p = MakeProj(n, in, out);
    for (Backend* be : {sb.get(), gpu_.get(), lt.get()}) {
      const std::string what = be == sb.get() ? "stream form" : be == gpu_.get() ? "stream form auto" : "stream form off";
      ProjOut o;
      RunProj(*be, p, &o);
      if (HasFatalFailure()) return;
      ExpectClose(o.linear_f32, p.want, 2e-3, what + ": Linear f32 vs CPU");
      ExpectClose(o.linear[0], p.want, 1e-2, what + ": Linear bf16 vs CPU");
      ExpectClose(o.many[0], p.want, 1e-2, what + ": LinearMany weight 0 vs CPU");
      ExpectClose(o.many[1], p.want2, 1e-2, what + ": LinearMany weight 1 vs CPU");
      ExpectClose(o.glu, p.want_glu, 1e-2, what + ": LinearSwiGlu vs CPU");
      if (be == sb.get()) {
        for (int k = 0; k < 2; ++k) {
          const size_t differ = BitsDiffer(o.many[k], o.linear[k]);
          EXPECT_EQ(differ, 0u) << "LinearMany output " << k << " differs from Linear in " << differ << " of "
                                << o.many[k].size() << " elements";
        }
      }
    }
  }
}

// The fused ops of a layer (LinearMany, LinearSwiGlu, AddRmsNorm, RopeQK) against the same
// sequence of unfused ops: on the CPU backend (bf16 tolerance) and on this GPU backend (the fused
// kernels round where the unfused ones do, so the results agree to the last bit). n <= 8 rows
// take the fused kernels; 12 and 32 take LinearMany's wide form (against Linear, which is then
// cuBLASLt, at bf16 tolerance) and the unfused rest; n = 40 takes the unfused fallback.
TEST_F(CudaBackendTest, FusedLayerOpsMatchTheUnfusedSequence) {
  for (int64_t n : {1, 3, 8, 12, 32, 40}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const int64_t d = 264, hq = 3, hk = 2, dh = 32, inter = 200;
    auto upload = [&](std::vector<float>& host, std::vector<int64_t> shape) {
      TensorView hv{host.data(), DType::kF32, MemSpace::kHost, shape};
      auto g = gpu_->UploadWeight(hv);
      auto c = cpu_->UploadWeight(hv);
      EXPECT_TRUE(g.ok() && c.ok());
      return std::make_pair(std::move(g).value(), std::move(c).value());
    };
    const float ws = 1.f / std::sqrt(static_cast<float>(d));
    std::vector<float> x = Random(n * d), wq = Random(hq * dh * d, ws), wk = Random(hk * dh * d, ws),
                       wv = Random(hk * dh * d, ws), wg = Random(inter * d, ws), wu = Random(inter * d, ws);
    auto [gq, cq] = upload(wq, {hq * dh, d});
    auto [gk, ck] = upload(wk, {hk * dh, d});
    auto [gv, cv] = upload(wv, {hk * dh, d});
    auto [gg, cg] = upload(wg, {inter, d});
    auto [gu, cu] = upload(wu, {inter, d});

    // LinearMany: q, k, v of one x.
    T gx = Gpu({n, d}, &x), cx = Cpu({n, d}, &x);
    std::vector<T> go, cgo, gref;
    for (int64_t of : {hq * dh, hk * dh, hk * dh}) {
      go.push_back(Gpu({n, of}, nullptr));
      gref.push_back(Gpu({n, of}, nullptr));
      cgo.push_back(Cpu({n, of}, nullptr));
    }
    const TensorView gw3[3] = {gq.view, gk.view, gv.view}, cw3[3] = {cq.view, ck.view, cv.view};
    const TensorView go3[3] = {go[0].view, go[1].view, go[2].view}, co3[3] = {cgo[0].view, cgo[1].view, cgo[2].view};
    ASSERT_TRUE(gpu_->LinearMany(gx.view, gw3, go3).ok());
    ASSERT_TRUE(cpu_->LinearMany(cx.view, cw3, co3).ok());
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(gpu_->Linear(gx.view, gw3[i], gref[i].view).ok());
      const std::vector<float> got = Read(*gpu_, go[i].view);
      ExpectClose(got, Read(*cpu_, cgo[i].view), 1e-2, "LinearMany " + std::to_string(i) + " vs CPU");
      ExpectClose(got, Read(*gpu_, gref[i].view), n <= cuda::kSkinnyNarrowMaxRows ? 0 : 1e-2,
                  "LinearMany " + std::to_string(i) + " vs Linear");
    }
    const TensorView two[2] = {go[0].view, go[1].view};
    EXPECT_EQ(gpu_->LinearMany(gx.view, gw3, two).code(), absl::StatusCode::kInvalidArgument);

    // RopeQK on the q and k just computed, against Rope on each (from the same q and k: above 8
    // rows Linear's outputs round differently from LinearMany's).
    if (n > cuda::kSkinnyNarrowMaxRows) {
      for (int i = 0; i < 2; ++i) {
        std::vector<float> same = Read(*gpu_, go[static_cast<size_t>(i)].view);
        gref[static_cast<size_t>(i)] = Gpu(go[static_cast<size_t>(i)].view.shape, &same);
      }
    }
    std::vector<int32_t> pos(n);
    for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(1000 * i + 7);
    RopeArgs r;
    r.theta = 10000.0;
    TensorView gq3 = go[0].view, gk3 = go[1].view, rq3 = gref[0].view, rk3 = gref[1].view;
    TensorView cq3 = cgo[0].view, ck3 = cgo[1].view;
    for (TensorView* t : {&gq3, &rq3, &cq3}) t->shape = {n, hq, dh};
    for (TensorView* t : {&gk3, &rk3, &ck3}) t->shape = {n, hk, dh};
    ASSERT_TRUE(gpu_->RopeQK(gq3, gk3, pos.data(), r).ok());
    ASSERT_TRUE(gpu_->Rope(rq3, pos.data(), r).ok());
    ASSERT_TRUE(gpu_->Rope(rk3, pos.data(), r).ok());
    ASSERT_TRUE(cpu_->RopeQK(cq3, ck3, pos.data(), r).ok());
    for (int i = 0; i < 2; ++i) {
      const std::vector<float> got = Read(*gpu_, go[i].view);
      ExpectClose(got, Read(*cpu_, cgo[i].view), 1e-2, "RopeQK " + std::to_string(i) + " vs CPU");
      ExpectClose(got, Read(*gpu_, gref[i].view), 0, "RopeQK " + std::to_string(i) + " vs Rope");
    }

    // LinearSwiGlu against Linear, Linear, SwiGlu.
    T gs = Gpu({n, inter}, nullptr), cs = Cpu({n, inter}, nullptr), rs = Gpu({n, inter}, nullptr);
    T ggate = Gpu({n, inter}, nullptr), gup = Gpu({n, inter}, nullptr), cgate = Cpu({n, inter}, nullptr),
      cup = Cpu({n, inter}, nullptr);
    ASSERT_TRUE(gpu_->LinearSwiGlu(gx.view, gg.view, gu.view, ggate.view, gup.view, gs.view).ok());
    ASSERT_TRUE(cpu_->LinearSwiGlu(cx.view, cg.view, cu.view, cgate.view, cup.view, cs.view).ok());
    ASSERT_TRUE(gpu_->Linear(gx.view, gg.view, ggate.view).ok());
    ASSERT_TRUE(gpu_->Linear(gx.view, gu.view, gup.view).ok());
    ASSERT_TRUE(gpu_->SwiGlu(ggate.view, gup.view, rs.view).ok());
    const std::vector<float> swi = Read(*gpu_, gs.view);
    ExpectClose(swi, Read(*cpu_, cs.view), 1e-2, "LinearSwiGlu vs CPU");
    ExpectClose(swi, Read(*gpu_, rs.view), 0, "LinearSwiGlu vs Linear, Linear, SwiGlu");

    // AddRmsNorm against AddInPlace + RmsNorm: both the sum and the norm.
    std::vector<float> h = Random(n * d, 2.f), y = Random(n * d), nw = Random(d);
    TensorView hnw{nw.data(), DType::kF32, MemSpace::kHost, {d}};
    auto gnw = gpu_->UploadWeight(hnw);
    auto cnw = cpu_->UploadWeight(hnw);
    ASSERT_TRUE(gnw.ok() && cnw.ok());
    T gh = Gpu({n, d}, &h), rh = Gpu({n, d}, &h), ch = Cpu({n, d}, &h), gy = Gpu({n, d}, &y), cy = Cpu({n, d}, &y);
    T gn = Gpu({n, d}, nullptr), rn = Gpu({n, d}, nullptr), cn = Cpu({n, d}, nullptr);
    ASSERT_TRUE(gpu_->AddRmsNorm(gh.view, gy.view, gnw->view, 1e-5f, gn.view).ok());
    ASSERT_TRUE(gpu_->AddInPlace(rh.view, gy.view).ok());
    ASSERT_TRUE(gpu_->RmsNorm(rh.view, gnw->view, 1e-5f, rn.view).ok());
    ASSERT_TRUE(cpu_->AddRmsNorm(ch.view, cy.view, cnw->view, 1e-5f, cn.view).ok());
    ExpectClose(Read(*gpu_, gh.view), Read(*cpu_, ch.view), 1e-2, "AddRmsNorm sum vs CPU");
    ExpectClose(Read(*gpu_, gh.view), Read(*gpu_, rh.view), 0, "AddRmsNorm sum vs AddInPlace");
    ExpectClose(Read(*gpu_, gn.view), Read(*cpu_, cn.view), 1e-2, "AddRmsNorm norm vs CPU");
    ExpectClose(Read(*gpu_, gn.view), Read(*gpu_, rn.view), 0, "AddRmsNorm norm vs RmsNorm");
  }
}

TEST_F(CudaBackendTest, RopeAtShortAndLongPositions) {
  // 24: the scalar kernel; 64, 128, 256: the vector kernel (one CTA per token; 33 heads of 128
  // are more groups than its threads). n = 1 is a decode step.
  for (auto [dh, n, heads] : {std::tuple<int64_t, int64_t, int64_t>{24, 50, 5}, {64, 50, 5}, {128, 50, 5},
                              {128, 1, 33}, {256, 3, 2}}) {
    std::vector<float> x = Random(n * heads * dh);
    std::vector<int32_t> pos(n);
    std::uniform_int_distribution<int32_t> p(0, 200000);
    for (int64_t i = 0; i < n; ++i) pos[i] = i < n / 2 ? static_cast<int32_t>(i) : p(rng_);
    for (double scale : {1.0, 4.0}) {
      RopeArgs r;
      r.theta = 500000.0;
      r.position_scale = scale;
      T gx = Gpu({n, heads, dh}, &x), cx = Cpu({n, heads, dh}, &x);
      ASSERT_TRUE(gpu_->Rope(gx.view, pos.data(), r).ok());
      ASSERT_TRUE(cpu_->Rope(cx.view, pos.data(), r).ok());
      ExpectClose(Read(*gpu_, gx.view), Read(*cpu_, cx.view), 1e-2, "rope dh=" + std::to_string(dh));
    }
  }
}

TEST_F(CudaBackendTest, GatherRows) {
  const int64_t rows = 40, d = 130, m = 17;
  std::vector<float> x = Random(rows * d);
  std::vector<int64_t> idx(m);
  std::uniform_int_distribution<int64_t> r(0, rows - 1);
  for (auto& i : idx) i = r(rng_);
  T gx = Gpu({rows, d}, &x), cx = Cpu({rows, d}, &x), go = Gpu({m, d}, nullptr), co = Cpu({m, d}, nullptr);
  ASSERT_TRUE(gpu_->GatherRows(gx.view, idx.data(), m, go.view).ok());
  ASSERT_TRUE(cpu_->GatherRows(cx.view, idx.data(), m, co.view).ok());
  ExpectClose(Read(*gpu_, go.view), Read(*cpu_, co.view), 0, "gather");
  idx[3] = rows;
  EXPECT_EQ(gpu_->GatherRows(gx.view, idx.data(), m, go.view).code(), absl::StatusCode::kInvalidArgument);
}

// Fills one sequence's KV on both backends through WriteKv at scattered blocks, then compares
// prefill attention (chunk at q_pos0 > 0, causal), decode attention over a ragged batch, and the
// LSE merge of two halves against the whole.
TEST_F(CudaBackendTest, KvCacheAttentionAndMerge) {
  struct Layout {
    int64_t hq, hkv, dh;
  };
  for (Layout lay : {Layout{8, 8, 64}, Layout{8, 2, 128}, Layout{4, 1, 64}, Layout{2, 4, 64}, Layout{4, 2, 128}}) {
    SCOPED_TRACE("hq=" + std::to_string(lay.hq) + " hkv=" + std::to_string(lay.hkv) + " dh=" + std::to_string(lay.dh));
    const int64_t ha = std::max(lay.hq, lay.hkv);
    KvCacheShape shape;
    shape.num_layers = 2;
    shape.num_blocks = 64;
    shape.block_size = 16;
    shape.num_kv_heads = lay.hkv;
    shape.head_dim = lay.dh;
    auto gkv = gpu_->CreateKvCache(shape);
    auto ckv = cpu_->CreateKvCache(shape);
    ASSERT_TRUE(gkv.ok() && ckv.ok());
    // Three sequences with shuffled block tables.
    std::vector<int32_t> ids(64);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng_);
    const std::vector<int64_t> lens = {301, 17, 130};
    std::vector<std::vector<int32_t>> tables;
    size_t next = 0;
    const int64_t layer = 1;
    for (int64_t len : lens) {
      std::vector<int32_t> t(static_cast<size_t>((len + 15) / 16));
      for (auto& b : t) b = ids[next++];
      tables.push_back(t);
      std::vector<float> k = Random(len * lay.hkv * lay.dh), v = Random(len * lay.hkv * lay.dh);
      std::vector<int64_t> slots(static_cast<size_t>(len));
      for (int64_t p = 0; p < len; ++p) slots[p] = int64_t{t[p / 16]} * 16 + p % 16;
      T gk = Gpu({len, lay.hkv, lay.dh}, &k), gv = Gpu({len, lay.hkv, lay.dh}, &v);
      T ck = Cpu({len, lay.hkv, lay.dh}, &k), cv = Cpu({len, lay.hkv, lay.dh}, &v);
      ASSERT_TRUE(gpu_->WriteKv(**gkv, layer, gk.view, gv.view, slots.data()).ok());
      ASSERT_TRUE(cpu_->WriteKv(**ckv, layer, ck.view, cv.view, slots.data()).ok());
    }

    // Prefill: last 100 tokens of sequence 0 as a chunk.
    {
      const int64_t n = 100, pos0 = lens[0] - n;
      std::vector<float> q = Random(n * lay.hq * lay.dh);
      T gq = Gpu({n, lay.hq, lay.dh}, &q), cq = Cpu({n, lay.hq, lay.dh}, &q);
      T go = Gpu({n, ha, lay.dh}, nullptr), co = Cpu({n, ha, lay.dh}, nullptr);
      T glse = Gpu({n, ha}, nullptr, DType::kF32), clse = Cpu({n, ha}, nullptr);
      PrefillAttentionArgs a;
      a.layer = layer;
      a.q_pos0 = pos0;
      a.kv = {tables[0].data(), lens[0]};
      a.cache = gkv->get();
      a.q = gq.view;
      a.out = go.view;
      a.lse = glse.view.as<float>();
      ASSERT_TRUE(gpu_->AttentionPrefill(a).ok());
      a.cache = ckv->get();
      a.q = cq.view;
      a.out = co.view;
      a.lse = clse.view.as<float>();
      ASSERT_TRUE(cpu_->AttentionPrefill(a).ok());
      ExpectClose(Read(*gpu_, go.view), Read(*cpu_, co.view), 1e-2, "prefill out");
      ExpectClose(Read(*gpu_, glse.view), Read(*cpu_, clse.view), 1e-3, "prefill lse");
    }
    // Decode over the three sequences.
    const int64_t b = static_cast<int64_t>(lens.size());
    std::vector<float> q = Random(b * lay.hq * lay.dh);
    DecodeAttentionArgs d;
    d.layer = layer;
    for (size_t i = 0; i < lens.size(); ++i) d.seqs.push_back({tables[i].data(), lens[i]});
    T gq = Gpu({b, lay.hq, lay.dh}, &q), cq = Cpu({b, lay.hq, lay.dh}, &q);
    T go = Gpu({b, ha, lay.dh}, nullptr), co = Cpu({b, ha, lay.dh}, nullptr);
    T glse = Gpu({b, ha}, nullptr, DType::kF32), clse = Cpu({b, ha}, nullptr);
    d.cache = gkv->get();
    d.q = gq.view;
    d.out = go.view;
    d.lse = glse.view.as<float>();
    ASSERT_TRUE(gpu_->AttentionDecode(d).ok());
    d.cache = ckv->get();
    d.q = cq.view;
    d.out = co.view;
    d.lse = clse.view.as<float>();
    ASSERT_TRUE(cpu_->AttentionDecode(d).ok());
    ExpectClose(Read(*gpu_, go.view), Read(*cpu_, co.view), 1e-2, "decode out");
    ExpectClose(Read(*gpu_, glse.view), Read(*cpu_, clse.view), 1e-3, "decode lse");

    // Merge: decode of sequence 0 split into its first 160 keys and (non-causally) the rest.
    // Non-causal prefill over blocks [10, 19) covers keys 160..300 when given a sub-table.
    {
      const std::vector<int32_t>& t0 = tables[0];
      std::vector<int32_t> head(t0.begin(), t0.begin() + 10), tail(t0.begin() + 10, t0.end());
      std::vector<float> q1 = Random(lay.hq * lay.dh);
      T gq1 = Gpu({1, lay.hq, lay.dh}, &q1);
      T o1 = Gpu({1, ha, lay.dh}, nullptr), o2 = Gpu({1, ha, lay.dh}, nullptr), om = Gpu({1, ha, lay.dh}, nullptr),
        ow = Gpu({1, ha, lay.dh}, nullptr);
      T l1 = Gpu({1, ha}, nullptr, DType::kF32), l2 = Gpu({1, ha}, nullptr, DType::kF32),
        lm = Gpu({1, ha}, nullptr, DType::kF32), lw = Gpu({1, ha}, nullptr, DType::kF32);
      DecodeAttentionArgs part;
      part.cache = gkv->get();
      part.layer = layer;
      part.q = gq1.view;
      part.seqs = {{head.data(), 160}};
      part.out = o1.view;
      part.lse = l1.view.as<float>();
      ASSERT_TRUE(gpu_->AttentionDecode(part).ok());
      part.seqs = {{tail.data(), lens[0] - 160}};
      part.out = o2.view;
      part.lse = l2.view.as<float>();
      ASSERT_TRUE(gpu_->AttentionDecode(part).ok());
      part.seqs = {{t0.data(), lens[0]}};
      part.out = ow.view;
      part.lse = lw.view.as<float>();
      ASSERT_TRUE(gpu_->AttentionDecode(part).ok());
      std::vector<TensorView> outs = {o1.view, o2.view};
      std::vector<const float*> lses = {l1.view.as<float>(), l2.view.as<float>()};
      ASSERT_TRUE(gpu_->MergeAttention(outs, lses, om.view, lm.view.as<float>()).ok());
      ExpectClose(Read(*gpu_, om.view), Read(*gpu_, ow.view), 1e-2, "merge out");
      ExpectClose(Read(*gpu_, lm.view), Read(*gpu_, lw.view), 1e-3, "merge lse");
    }
  }
}

// RopeQKWriteKv (RoPE and the cache write in one kernel) against RopeQK + WriteKv on the same
// backend, bit for bit (the rotated q and k, and decode attention over the two caches), and
// against the CPU backend. The GPU calls get one padding row more, with slot -1: rotated, not
// stored. Positions reach 200k; one case has more head groups than the kernel's threads cover in
// one pass; n = 1 is a decode step.
TEST_F(CudaBackendTest, RopeAndKvWriteInOneKernel) {
  struct Case {
    int64_t hq, hkv, dh, n;
  };
  for (Case c : {Case{8, 2, 128, 37}, Case{4, 4, 64, 20}, Case{32, 32, 128, 1}, Case{16, 8, 128, 3}}) {
    SCOPED_TRACE("hq=" + std::to_string(c.hq) + " hkv=" + std::to_string(c.hkv) + " dh=" + std::to_string(c.dh) +
                 " n=" + std::to_string(c.n));
    const int64_t ha = std::max(c.hq, c.hkv), rows = c.n + 1;
    KvCacheShape shape;
    shape.num_layers = 2;
    shape.num_blocks = 16;
    shape.block_size = 16;
    shape.num_kv_heads = c.hkv;
    shape.head_dim = c.dh;
    auto fused_kv = gpu_->CreateKvCache(shape), split_kv = gpu_->CreateKvCache(shape), ckv = cpu_->CreateKvCache(shape);
    ASSERT_TRUE(fused_kv.ok() && split_kv.ok() && ckv.ok());
    std::vector<int32_t> table(static_cast<size_t>(shape.num_blocks));
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), rng_);
    // The sequence's n tokens sit at the end of a context of `len` keys whose earlier keys come
    // from a plain WriteKv (a decode step appends to a cache that holds a prompt).
    const int64_t len = 150 + c.n, first = len - c.n;
    {
      std::vector<float> k0 = Random(first * c.hkv * c.dh), v0 = Random(first * c.hkv * c.dh);
      std::vector<int64_t> slots0(static_cast<size_t>(first));
      for (int64_t p = 0; p < first; ++p) slots0[p] = int64_t{table[p / 16]} * 16 + p % 16;
      T gk = Gpu({first, c.hkv, c.dh}, &k0), gv = Gpu({first, c.hkv, c.dh}, &v0);
      T ck = Cpu({first, c.hkv, c.dh}, &k0), cv = Cpu({first, c.hkv, c.dh}, &v0);
      for (auto* kv : {&fused_kv, &split_kv}) ASSERT_TRUE(gpu_->WriteKv(***kv, 1, gk.view, gv.view, slots0.data()).ok());
      ASSERT_TRUE(cpu_->WriteKv(**ckv, 1, ck.view, cv.view, slots0.data()).ok());
    }
    std::vector<float> q = Random(rows * c.hq * c.dh), k = Random(rows * c.hkv * c.dh), v = Random(rows * c.hkv * c.dh);
    std::vector<int32_t> pos(static_cast<size_t>(rows));
    std::vector<int64_t> slots(static_cast<size_t>(rows));
    for (int64_t i = 0; i < c.n; ++i) {
      pos[i] = static_cast<int32_t>(first + i + (c.n == 3 ? 200000 : 0));
      slots[i] = int64_t{table[(first + i) / 16]} * 16 + (first + i) % 16;
    }
    pos[c.n] = 7;
    slots[c.n] = -1;
    RopeArgs r;
    r.theta = 500000.0;
    T fq = Gpu({rows, c.hq, c.dh}, &q), fk = Gpu({rows, c.hkv, c.dh}, &k), fv = Gpu({rows, c.hkv, c.dh}, &v);
    T sq = Gpu({rows, c.hq, c.dh}, &q), sk = Gpu({rows, c.hkv, c.dh}, &k), sv = Gpu({rows, c.hkv, c.dh}, &v);
    ASSERT_TRUE(gpu_->RopeQKWriteKv(fq.view, fk.view, fv.view, pos.data(), r, **fused_kv, 1, slots.data()).ok());
    ASSERT_TRUE(gpu_->RopeQK(sq.view, sk.view, pos.data(), r).ok());
    ASSERT_TRUE(gpu_->WriteKv(**split_kv, 1, sk.view, sv.view, slots.data()).ok());
    EXPECT_EQ(Read(*gpu_, fq.view), Read(*gpu_, sq.view)) << "q";
    EXPECT_EQ(Read(*gpu_, fk.view), Read(*gpu_, sk.view)) << "k";
    // The CPU backend: its n real rows (its WriteKv takes no padding slot).
    std::vector<float> qn(q.begin(), q.begin() + c.n * c.hq * c.dh), kn(k.begin(), k.begin() + c.n * c.hkv * c.dh),
        vn(v.begin(), v.begin() + c.n * c.hkv * c.dh);
    T cq = Cpu({c.n, c.hq, c.dh}, &qn), ck = Cpu({c.n, c.hkv, c.dh}, &kn), cv = Cpu({c.n, c.hkv, c.dh}, &vn);
    ASSERT_TRUE(cpu_->RopeQKWriteKv(cq.view, ck.view, cv.view, pos.data(), r, **ckv, 1, slots.data()).ok());
    std::vector<float> gq_all = Read(*gpu_, fq.view);
    ExpectClose(std::vector<float>(gq_all.begin(), gq_all.begin() + c.n * c.hq * c.dh), Read(*cpu_, cq.view), 1e-2,
                "rotated q against the CPU");
    // Decode attention of random queries over each cache.
    std::vector<float> qd = Random(c.hq * c.dh);
    T gqd = Gpu({1, c.hq, c.dh}, &qd), cqd = Cpu({1, c.hq, c.dh}, &qd);
    auto decode = [&](Backend& be, KvCacheStorage* cache, const TensorView& qv, const TensorView& out) {
      DecodeAttentionArgs d;
      d.layer = 1;
      d.cache = cache;
      d.q = qv;
      d.out = out;
      d.seqs = {{table.data(), len}};
      return be.AttentionDecode(d);
    };
    T fo = Gpu({1, ha, c.dh}, nullptr), so = Gpu({1, ha, c.dh}, nullptr), co = Cpu({1, ha, c.dh}, nullptr);
    ASSERT_TRUE(decode(*gpu_, fused_kv->get(), gqd.view, fo.view).ok());
    ASSERT_TRUE(decode(*gpu_, split_kv->get(), gqd.view, so.view).ok());
    ASSERT_TRUE(decode(*cpu_, ckv->get(), cqd.view, co.view).ok());
    const std::vector<float> fused_out = Read(*gpu_, fo.view);
    EXPECT_EQ(fused_out, Read(*gpu_, so.view)) << "attention over the fused op's cache";
    ExpectClose(fused_out, Read(*cpu_, co.view), 1e-2, "attention against the CPU");
  }
}

TEST_F(CudaBackendTest, BadKvArgumentsAreErrors) {
  KvCacheShape shape{2, 8, 16, 2, 64};
  auto gkv = gpu_->CreateKvCache(shape);
  ASSERT_TRUE(gkv.ok());
  std::vector<float> k = Random(3 * 2 * 64);
  T gk = Gpu({3, 2, 64}, &k);
  std::vector<int64_t> slots = {0, 1, 8 * 16};  // last is beyond the cache
  EXPECT_EQ(gpu_->WriteKv(**gkv, 0, gk.view, gk.view, slots.data()).code(), absl::StatusCode::kInvalidArgument);
  slots[2] = 2;
  EXPECT_EQ(gpu_->WriteKv(**gkv, 2, gk.view, gk.view, slots.data()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(gpu_->WriteKv(**gkv, 1, gk.view, gk.view, slots.data()).ok());
  std::vector<int32_t> table = {9};  // block id outside the cache
  std::vector<float> q = Random(2 * 64);
  T gq = Gpu({1, 2, 64}, &q), go = Gpu({1, 2, 64}, nullptr);
  DecodeAttentionArgs d;
  d.cache = gkv->get();
  d.layer = 0;
  d.q = gq.view;
  d.out = go.view;
  d.seqs = {{table.data(), 3}};
  EXPECT_EQ(gpu_->AttentionDecode(d).code(), absl::StatusCode::kInvalidArgument);
  // A cache from another backend is refused.
  auto ckv = cpu_->CreateKvCache(shape);
  ASSERT_TRUE(ckv.ok());
  EXPECT_EQ(gpu_->WriteKv(**ckv, 0, gk.view, gk.view, slots.data()).code(), absl::StatusCode::kInvalidArgument);
  // The fused RoPE + cache write checks the same: a slot beyond the cache, a missing or negative
  // position, a layer the cache lacks, a foreign cache.
  std::vector<float> q3 = Random(3 * 4 * 64);
  T fq = Gpu({3, 4, 64}, &q3);
  std::vector<int32_t> pos = {5, 6, 7};
  RopeArgs r;
  slots[2] = 8 * 16;
  EXPECT_EQ(gpu_->RopeQKWriteKv(fq.view, gk.view, gk.view, pos.data(), r, **gkv, 0, slots.data()).code(),
            absl::StatusCode::kInvalidArgument);
  slots[2] = 2;
  EXPECT_EQ(gpu_->RopeQKWriteKv(fq.view, gk.view, gk.view, nullptr, r, **gkv, 0, slots.data()).code(),
            absl::StatusCode::kInvalidArgument);
  pos[1] = -1;
  EXPECT_EQ(gpu_->RopeQKWriteKv(fq.view, gk.view, gk.view, pos.data(), r, **gkv, 0, slots.data()).code(),
            absl::StatusCode::kInvalidArgument);
  pos[1] = 6;
  EXPECT_EQ(gpu_->RopeQKWriteKv(fq.view, gk.view, gk.view, pos.data(), r, **gkv, 2, slots.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu_->RopeQKWriteKv(fq.view, gk.view, gk.view, pos.data(), r, **ckv, 0, slots.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(gpu_->RopeQKWriteKv(fq.view, gk.view, gk.view, pos.data(), r, **gkv, 1, slots.data()).ok());
}

// GPU sampling against the host's SampleToken: same (seed, step) draws, so the same tokens.
TEST_F(CudaBackendTest, SamplingMatchesHostSampler) {
  std::uniform_real_distribution<float> temp(0.2f, 1.5f), topp(0.3f, 1.f);
  std::uniform_int_distribution<int32_t> topk(1, 80);
  std::uniform_int_distribution<uint64_t> seed;
  int mismatches = 0, total = 0;
  for (int64_t vocab : {1000, 32000}) {
    const int64_t rows = 24;
    std::vector<float> logits = Random(rows * vocab, 3.f);
    // Row 0: a tie for the maximum (greedy must take the lowest id).
    logits[17] = logits[400] = 50.f;
    std::vector<SamplingParams> params(rows);
    std::vector<uint64_t> steps(rows);
    for (int64_t r = 0; r < rows; ++r) {
      SamplingParams& p = params[r];
      p.seed = seed(rng_);
      steps[r] = static_cast<uint64_t>(r * 7 + 3);
      switch (r % 6) {
        case 0: break;                                                  // greedy
        case 1: p.temperature = temp(rng_); break;                      // plain temperature
        case 2: p.temperature = temp(rng_), p.top_k = topk(rng_); break;
        case 3: p.temperature = temp(rng_), p.top_p = topp(rng_); break;
        case 4: p.temperature = temp(rng_), p.top_k = topk(rng_), p.top_p = topp(rng_); break;
        case 5: p.temperature = 1.f, p.top_k = 1; break;                // top-1: the argmax
      }
    }
    T g = Gpu({rows, vocab}, &logits, DType::kF32);
    auto got = SampleOnCuda(*gpu_, g.view, params, steps);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(static_cast<int64_t>(got->size()), rows);
    for (int64_t r = 0; r < rows; ++r) {
      const SampledToken want = SampleToken(logits.data() + r * vocab, vocab, params[r], steps[r]);
      ++total;
      if ((*got)[r].token != want.token) {
        ++mismatches;
        ADD_FAILURE() << "vocab " << vocab << " row " << r << ": gpu token " << (*got)[r].token << ", host "
                      << want.token;
      }
      EXPECT_NEAR((*got)[r].logprob, want.logprob, 1e-4 * std::max(1.f, std::fabs(want.logprob)));
    }
    EXPECT_EQ((*got)[0].token, 17);
  }
  EXPECT_EQ(mismatches, 0) << "of " << total;
  // Bad params and a non-CUDA backend are errors.
  std::vector<float> l = Random(10);
  T g = Gpu({1, 10}, &l, DType::kF32);
  SamplingParams bad;
  bad.top_p = 0.f;
  std::vector<uint64_t> step = {0};
  EXPECT_EQ(SampleOnCuda(*gpu_, g.view, {&bad, 1}, step).status().code(), absl::StatusCode::kInvalidArgument);
  T c = Cpu({1, 10}, &l);
  SamplingParams ok;
  EXPECT_EQ(SampleOnCuda(*cpu_, c.view, {&ok, 1}, step).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sqa
