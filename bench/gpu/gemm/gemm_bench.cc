// sqa-gemm-bench: the decode GEMMs of a model's projections (x [n, in] times W [out, in]^T, bf16,
// n = 1..64 rows), side by side in one run on the same buffers: cuBLASLt (LtGemm with the skinny
// kernel off), the skinny kernel's narrow (1-8 rows) or wide form (9-32), and its stream form
// (9-64 rows; the engine uses it where SkinnyStreamPreferred, marked in the JSON); then the fused forms a layer runs (q, k, v in
// one launch; gate, up and SwiGLU) against their unfused cuBLASLt sequence. The skinny launches
// are programmatic dependents (as in a decode step: each starts reading its weights while the
// previous kernel finishes); cuBLASLt's are not.
//
//   sqa-gemm-bench [--rows 1,2,4,8] [--shapes in:out[:f32],...] [--skinny-warps auto|8|16] [--json F]
//
// The default shapes are the 1b preset's (d 2048, MLP 5632, vocab 32000 with f32 logits), the
// narrow q/k/v of its SQA layouts (512, 1024 features) and their output projections (512 and 1024
// in). Timing: one CUDA graph of 32 launches, each on its own copy of W (copies rotate through
// more memory than L2 holds, so W comes from DRAM), replayed after a warm-up; the median replay
// over 32 is the per-launch time. GB/s counts W's bytes (x and out are at most 2% of them). Before
// timing, each skinny form's output is compared with cuBLASLt's (max |skinny - cuBLASLt| / max
// |cuBLASLt|, printed; bf16 outputs round differently). n/a: the form does not take that shape.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "workers/engine/cuda/elementwise.h"
#include "workers/engine/cuda/gemm.h"
#include "workers/engine/cuda/skinny_gemm.h"

namespace {

#define CK(x)                                                                                     \
  do {                                                                                            \
    cudaError_t e_ = (x);                                                                         \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "sqa-gemm-bench: %s: %s (line %d)\n", #x, cudaGetErrorString(e_), __LINE__); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

struct Shape {
  int64_t in, out;
  bool f32;
};

constexpr double kCopyCeiling = 4.08e12;  // device copy, read + write (REFERENCE.md)
constexpr int kLaunches = 32;

std::vector<uint16_t> RandomBf16(size_t n, float scale, std::mt19937& rng) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<uint16_t> v(n);
  for (auto& x : v) {
    const float f = d(rng);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    x = static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
  }
  return v;
}

float ToFloat(const void* p, bool f32, size_t i) {
  if (f32) return static_cast<const float*>(p)[i];
  const uint32_t u = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Median per-launch microseconds of a graph of kLaunches calls of launch(l, stream).
double TimeGraph(cudaStream_t stream, cudaEvent_t e0, cudaEvent_t e1,
                 const std::function<absl::Status(int, cudaStream_t)>& launch) {
  cudaGraph_t g;
  CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  absl::Status st;
  for (int l = 0; l < kLaunches && st.ok(); ++l) st = launch(l, stream);
  CK(cudaStreamEndCapture(stream, &g));
  if (!st.ok()) {
    std::fprintf(stderr, "sqa-gemm-bench: %s\n", st.ToString().c_str());
    std::exit(1);
  }
  cudaGraphExec_t ge;
  CK(cudaGraphInstantiate(&ge, g, 0));
  for (int r = 0; r < 5; ++r) CK(cudaGraphLaunch(ge, stream));
  std::vector<float> t;
  for (int r = 0; r < 32; ++r) {
    CK(cudaEventRecord(e0, stream));
    CK(cudaGraphLaunch(ge, stream));
    CK(cudaEventRecord(e1, stream));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  CK(cudaGraphExecDestroy(ge));
  CK(cudaGraphDestroy(g));
  return 1e3 * t[t.size() / 2] / kLaunches;
}

bool ParseInts(const std::string& s, std::vector<int64_t>* out) {
  out->clear();
  size_t p = 0;
  while (p < s.size()) {
    size_t q = s.find(',', p);
    if (q == std::string::npos) q = s.size();
    try {
      out->push_back(std::stoll(s.substr(p, q - p)));
    } catch (...) {
      return false;
    }
    p = q + 1;
  }
  return !out->empty();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> rows = {1, 2, 4, 8};
  std::vector<Shape> shapes = {{2048, 2048, false}, {2048, 512, false},  {2048, 1024, false}, {512, 2048, false},
                               {1024, 2048, false}, {2048, 5632, false}, {5632, 2048, false}, {2048, 32000, true}};
  std::string json_path;
  std::string warps_name = "auto";
  sqa::cuda::SkinnyWarps warps = sqa::cuda::SkinnyWarps::kAuto;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--rows") {
      if (!ParseInts(v, &rows)) return std::fprintf(stderr, "bad --rows %s\n", v.c_str()), 2;
    } else if (a == "--shapes") {
      shapes.clear();
      size_t p = 0;
      while (p < v.size()) {
        size_t q = v.find(',', p);
        if (q == std::string::npos) q = v.size();
        const std::string t = v.substr(p, q - p);
        Shape s{};
        char kind[8] = {0};
        if (std::sscanf(t.c_str(), "%ld:%ld:%7s", &s.in, &s.out, kind) < 2) {
          return std::fprintf(stderr, "bad shape %s (in:out[:f32])\n", t.c_str()), 2;
        }
        s.f32 = std::string(kind) == "f32";
        shapes.push_back(s);
        p = q + 1;
      }
    } else if (a == "--json") {
      json_path = v;
    } else if (a == "--skinny-warps") {
      if (v != "auto" && v != "8" && v != "16") return std::fprintf(stderr, "--skinny-warps: auto, 8 or 16\n"), 2;
      warps_name = v;
      warps = v == "8" ? sqa::cuda::SkinnyWarps::k8 : v == "16" ? sqa::cuda::SkinnyWarps::k16 : sqa::cuda::SkinnyWarps::kAuto;
    } else {
      return std::fprintf(stderr, "usage: sqa-gemm-bench [--rows 1,2,4,8] [--shapes in:out[:f32],...] "
                                  "[--skinny-warps auto|8|16] [--json F]\n"), 2;
    }
  }
  for (int64_t n : rows) {
    if (n < 1 || n > sqa::cuda::kSkinnyStreamMaxRows) {
      return std::fprintf(stderr, "--rows: 1..%ld\n", static_cast<long>(sqa::cuda::kSkinnyStreamMaxRows)), 2;
    }
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  auto gemm_or = sqa::cuda::LtGemm::Create();
  if (!gemm_or.ok()) return std::fprintf(stderr, "%s\n", gemm_or.status().ToString().c_str()), 1;
  sqa::cuda::LtGemm gemm = std::move(gemm_or).value();
  gemm.set_skinny_warps(warps);
  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::mt19937 rng(7);

  nlohmann::json out = nlohmann::json::array();
  std::printf("GPU %s; graph of %d launches, W from DRAM; GB/s of W; ceiling %.2f TB/s\n", prop.name, kLaunches,
              kCopyCeiling / 1e12);
  std::printf("%5s %6s %6s %4s | %9s %7s %6s | %9s %7s %6s %8s | %9s %7s %6s %8s\n", "rows", "in", "out", "out",
              "cuBLASLt us", "GB/s", "%ceil", "skinny us", "GB/s", "%ceil", "max rel", "stream us", "GB/s", "%ceil",
              "max rel");
  gemm.set_skinny_max_rows(0);  // LtGemm: cuBLASLt only
  gemm.set_stream_mode(sqa::cuda::SkinnyStream::kOff);
  for (const Shape& s : shapes) {
    const size_t wbytes = static_cast<size_t>(s.in * s.out) * 2;
    const int copies =
        static_cast<int>(std::min<size_t>(kLaunches, std::max<size_t>(2, (size_t{512} << 20) / wbytes + 1)));
    std::vector<void*> w(copies);
    const std::vector<uint16_t> hw = RandomBf16(static_cast<size_t>(s.in * s.out), 1.f / std::sqrt(float(s.in)), rng);
    for (auto& p : w) {
      CK(cudaMalloc(&p, wbytes));
      CK(cudaMemcpy(p, hw.data(), wbytes, cudaMemcpyHostToDevice));
    }
    const int64_t nmax = *std::max_element(rows.begin(), rows.end());
    const std::vector<uint16_t> hx = RandomBf16(static_cast<size_t>(nmax * s.in), 1.f, rng);
    void *x, *y;
    const size_t osize = s.f32 ? 4 : 2;
    CK(cudaMalloc(&x, hx.size() * 2));
    CK(cudaMemcpy(x, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&y, static_cast<size_t>(nmax * s.out) * osize * 2));
    void* y2 = static_cast<char*>(y) + static_cast<size_t>(nmax * s.out) * osize;
    const sqa::DType ot = s.f32 ? sqa::DType::kF32 : sqa::DType::kBF16;
    for (int64_t n : rows) {
      // path 0: cuBLASLt; 1: the narrow or wide form; 2: the stream form.
      const bool have[3] = {true, n <= sqa::cuda::kSkinnyMaxRows,
                            n > sqa::cuda::kSkinnyNarrowMaxRows &&
                                sqa::cuda::SkinnyStreamApplies(x, w[0], y, ot, n, s.in, s.out)};
      auto launch = [&](int path, const void* wp, void* yp, cudaStream_t st2) -> absl::Status {
        if (path == 1) return sqa::cuda::LaunchSkinnyGemm(x, wp, yp, ot, n, s.in, s.out, st2, warps, gemm.skinny_workspace());
        if (path == 2) {
          const sqa::cuda::SkinnyOutput o{wp, yp, s.out};
          return sqa::cuda::LaunchSkinnyStream(x, n, s.in, absl::MakeConstSpan(&o, 1), ot, st2, gemm.skinny_workspace());
        }
        return gemm.Linear(x, wp, yp, ot, n, s.in, s.out, st2);
      };
      // Agreement of each skinny form with cuBLASLt on one launch.
      auto st = launch(0, w[0], y, stream);
      if (!st.ok()) return std::fprintf(stderr, "%s\n", st.ToString().c_str()), 1;
      CK(cudaStreamSynchronize(stream));
      std::vector<char> a(static_cast<size_t>(n * s.out) * osize), b(a.size());
      CK(cudaMemcpy(a.data(), y, a.size(), cudaMemcpyDeviceToHost));
      double rel[3] = {0, NAN, NAN}, us[3] = {NAN, NAN, NAN};
      for (int path = 1; path < 3; ++path) {
        if (!have[path]) continue;
        CK(cudaMemsetAsync(y2, 0xff, a.size(), stream));  // NaN: an unwritten element shows
        st = launch(path, w[0], y2, stream);
        if (!st.ok()) return std::fprintf(stderr, "%s\n", st.ToString().c_str()), 1;
        CK(cudaStreamSynchronize(stream));
        CK(cudaMemcpy(b.data(), y2, b.size(), cudaMemcpyDeviceToHost));
        double ref = 0, err = 0;
        for (size_t i = 0; i < static_cast<size_t>(n * s.out); ++i) {
          const double fa = ToFloat(a.data(), s.f32, i), fb = ToFloat(b.data(), s.f32, i);
          ref = std::max(ref, std::fabs(fa));
          err = std::isnan(fb) ? INFINITY : std::max(err, std::fabs(fa - fb));
        }
        rel[path] = ref > 0 ? err / ref : err;
      }
      for (int path = 0; path < 3; ++path) {
        if (!have[path]) continue;
        us[path] = TimeGraph(stream, e0, e1, [&](int l, cudaStream_t st2) { return launch(path, w[l % copies], y, st2); });
      }
      auto gbs = [&](double t) { return wbytes / (t * 1e-6) / 1e9; };
      auto pct = [&](double t) { return 100 * gbs(t) * 1e9 / kCopyCeiling; };
      std::printf("%5ld %6ld %6ld %4s | %9.2f %7.0f %5.1f%% | %9.2f %7.0f %5.1f%% %8.1e | %9.2f %7.0f %5.1f%% %8.1e\n", n,
                  s.in, s.out, s.f32 ? "f32" : "bf16", us[0], gbs(us[0]), pct(us[0]), us[1], gbs(us[1]), pct(us[1]),
                  rel[1], us[2], gbs(us[2]), pct(us[2]), rel[2]);
      auto num = [](double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
      out.push_back({{"rows", n},
                     {"in", s.in},
                     {"out", s.out},
                     {"out_dtype", s.f32 ? "f32" : "bf16"},
                     {"weight_bytes", wbytes},
                     {"cublaslt_us", us[0]},
                     {"skinny_us", num(us[1])},
                     {"stream_us", num(us[2])},
                     {"cublaslt_gbs", gbs(us[0])},
                     {"skinny_gbs", num(gbs(us[1]))},
                     {"stream_gbs", num(gbs(us[2]))},
                     {"max_rel_diff", num(rel[1])},
                     {"stream_max_rel_diff", num(rel[2])},
                     {"stream_preferred", have[2] && sqa::cuda::SkinnyStreamPreferred(n, s.in, absl::MakeConstSpan(&s.out, 1),
                                                                                       gemm.skinny_workspace())}});
    }
    for (auto p : w) CK(cudaFree(p));
    CK(cudaFree(x));
    CK(cudaFree(y));
  }
  // The fused forms a layer runs: q, k, v of one x (three cuBLASLt launches against one skinny
  // launch over the three weights), and gate, up, SwiGLU (two cuBLASLt launches and the SwiGLU
  // kernel against one skinny launch). Widths of the 1b preset: MHA's q/k/v (3 x 2048) and
  // xSQA's (3 x 512), MLP 5632.
  nlohmann::json fused = nlohmann::json::array();
  std::printf("\nfused ops (d = 2048)\n%-22s %5s | %9s %7s | %9s %7s | %9s %7s\n", "op", "rows", "cuBLASLt us",
              "GB/s", "skinny us", "GB/s", "stream us", "GB/s");
  struct Fused {
    const char* name;
    std::vector<int64_t> outs;
    bool glu;
  };
  const int64_t d = 2048;
  for (const Fused& f : {Fused{"q,k,v 3x2048", {2048, 2048, 2048}, false}, Fused{"q,k,v 3x512", {512, 512, 512}, false},
                         Fused{"gate,up,SwiGLU 5632", {5632, 5632}, true}}) {
    size_t set_bytes = 0;
    for (int64_t o : f.outs) set_bytes += static_cast<size_t>(o * d) * 2;
    const int copies =
        static_cast<int>(std::min<size_t>(kLaunches, std::max<size_t>(2, (size_t{512} << 20) / set_bytes + 1)));
    std::vector<std::vector<void*>> w(copies, std::vector<void*>(f.outs.size()));
    for (auto& set : w) {
      for (size_t i = 0; i < set.size(); ++i) {
        const size_t b = static_cast<size_t>(f.outs[i] * d) * 2;
        CK(cudaMalloc(&set[i], b));
        const std::vector<uint16_t> hw = RandomBf16(b / 2, 1.f / std::sqrt(float(d)), rng);
        CK(cudaMemcpy(set[i], hw.data(), b, cudaMemcpyHostToDevice));
      }
    }
    const int64_t nmax = *std::max_element(rows.begin(), rows.end());
    void* x;
    const std::vector<uint16_t> hx = RandomBf16(static_cast<size_t>(nmax * d), 1.f, rng);
    CK(cudaMalloc(&x, hx.size() * 2));
    CK(cudaMemcpy(x, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice));
    std::vector<void*> y(f.outs.size() + 1);
    for (size_t i = 0; i < y.size(); ++i) CK(cudaMalloc(&y[i], static_cast<size_t>(nmax * f.outs[0]) * 2));
    for (int64_t n : rows) {
      // path 0: cuBLASLt per weight (and the SwiGLU kernel); 1: the narrow form's fused launch (GLU
      // up to 8 rows) or the wide form's (q/k/v up to 32); 2: the stream form's launch (then SwiGLU).
      const bool have[3] = {true, f.glu ? n <= sqa::cuda::kSkinnyNarrowMaxRows : n <= sqa::cuda::kSkinnyMaxRows,
                            n > sqa::cuda::kSkinnyNarrowMaxRows};
      double us[3] = {NAN, NAN, NAN};
      for (int path = 0; path < 3; ++path) {
        if (!have[path]) continue;
        us[path] = TimeGraph(stream, e0, e1, [&](int l, cudaStream_t st) -> absl::Status {
          const std::vector<void*>& set = w[l % copies];
          if (path == 1 && f.glu) {
            return sqa::cuda::LaunchSkinnySwiGlu(x, set[0], set[1], y[2], n, d, f.outs[0], st, warps);
          }
          if (path >= 1) {
            std::vector<sqa::cuda::SkinnyOutput> so;
            for (size_t i = 0; i < set.size(); ++i) so.push_back({set[i], y[i], f.outs[i]});
            const absl::Status s2 =
                path == 1 ? sqa::cuda::LaunchSkinnyGemmMany(x, n, d, so, sqa::DType::kBF16, st, warps, gemm.skinny_workspace())
                          : sqa::cuda::LaunchSkinnyStream(x, n, d, so, sqa::DType::kBF16, st, gemm.skinny_workspace());
            if (!s2.ok() || !f.glu) return s2;
            return sqa::cuda::LaunchSwiGlu(y[0], y[1], y[2], sqa::DType::kBF16, n * f.outs[0], st);
          }
          for (size_t i = 0; i < set.size(); ++i) {
            absl::Status s2 = gemm.Linear(x, set[i], y[i], sqa::DType::kBF16, n, d, f.outs[i], st);
            if (!s2.ok()) return s2;
          }
          return f.glu ? sqa::cuda::LaunchSwiGlu(y[0], y[1], y[2], sqa::DType::kBF16, n * f.outs[0], st)
                       : absl::OkStatus();
        });
      }
      auto g = [&](double t) { return set_bytes / (t * 1e-6) / 1e9; };
      auto num = [](double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
      std::printf("%-22s %5ld | %9.2f %7.0f | %9.2f %7.0f | %9.2f %7.0f\n", f.name, n, us[0], g(us[0]), us[1], g(us[1]),
                  us[2], g(us[2]));
      // As the backend decides: gate and up as one launch; q, k, v (LinearMany) weight by weight.
      bool preferred = have[2];
      if (f.glu) {
        preferred = preferred && sqa::cuda::SkinnyStreamPreferred(n, d, f.outs, gemm.skinny_workspace());
      } else {
        for (const int64_t& o : f.outs) {
          preferred = preferred && sqa::cuda::SkinnyStreamPreferred(n, d, absl::MakeConstSpan(&o, 1), gemm.skinny_workspace());
        }
      }
      fused.push_back({{"op", f.name}, {"rows", n}, {"weight_bytes", set_bytes}, {"cublaslt_us", us[0]},
                       {"skinny_us", num(us[1])}, {"stream_us", num(us[2])}, {"cublaslt_gbs", g(us[0])},
                       {"skinny_gbs", num(g(us[1]))}, {"stream_gbs", num(g(us[2]))}, {"stream_preferred", preferred}});
    }
    for (auto& set : w)
      for (void* p : set) CK(cudaFree(p));
    for (void* p : y) CK(cudaFree(p));
    CK(cudaFree(x));
  }
  if (!json_path.empty()) {
    nlohmann::json doc = {{"gpu", prop.name}, {"ceiling_tbs", kCopyCeiling / 1e12}, {"launches", kLaunches}, {"skinny_warps", warps_name},
                          {"rows", out}, {"fused", fused}};
    std::ofstream(json_path) << doc.dump(1) << "\n";
  }
  return 0;
}
