#include "workers/engine/cpu/cpu_backend.h"

#include <cblas.h>
#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "services/common/log.h"
#include "services/common/status.h"
#include "workers/engine/cpu/attention.h"
#include "workers/engine/cpu/simd.h"
#include "workers/engine/cpu/small_gemm.h"

namespace sqa {
namespace {

constexpr size_t kAlign = 64;

class CpuBuffer : public DeviceBuffer {
 public:
  static absl::StatusOr<std::unique_ptr<CpuBuffer>> Make(size_t bytes) {
    const size_t rounded = std::max<size_t>(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
    void* p = std::aligned_alloc(kAlign, rounded);
    if (p == nullptr) return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes of host memory"));
    return std::unique_ptr<CpuBuffer>(new CpuBuffer(p, bytes));
  }
  ~CpuBuffer() override { std::free(data_); }
  void* data() override { return data_; }
  size_t size() const override { return size_; }

 private:
  CpuBuffer(void* p, size_t n) : data_(p), size_(n) {}
  void* data_;
  size_t size_;
};

class CpuKvCache : public KvCacheStorage {
 public:
  CpuKvCache(const KvCacheShape& shape, std::unique_ptr<CpuBuffer> buf) : shape_(shape), buf_(std::move(buf)) {}
  const KvCacheShape& shape() const override { return shape_; }
  size_t bytes_per_block() const override { return static_cast<size_t>(2 * shape_.block_elems()) * sizeof(float); }
  float* base() const { return static_cast<float*>(buf_->data()); }
  // Floats per block (K then V).
  int64_t block_stride() const { return 2 * shape_.block_elems(); }
  float* layer_base(int64_t layer) const { return base() + layer * shape_.num_blocks * block_stride(); }

 private:
  KvCacheShape shape_;
  std::unique_ptr<CpuBuffer> buf_;
};

std::string Shape(const TensorView& t) { return ShapeString(t.shape); }

absl::Status CheckF32(const TensorView& t, const char* what) {
  if (t.data == nullptr && t.numel() > 0) return absl::InvalidArgumentError(absl::StrCat(what, ": null data"));
  if (t.dtype != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": the CPU backend needs F32, got ", std::string(DTypeName(t.dtype))));
  }
  return absl::OkStatus();
}

absl::Status CheckRank(const TensorView& t, size_t rank, const char* what) {
  if (t.shape.size() != rank) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": expected rank ", rank, ", got shape ", Shape(t)));
  }
  return absl::OkStatus();
}

// Rows and columns of a tensor seen as a matrix (last dim = columns).
int64_t Cols(const TensorView& t) { return t.shape.empty() ? 1 : t.shape.back(); }
int64_t Rows(const TensorView& t) {
  const int64_t c = Cols(t);
  return c == 0 ? 0 : t.numel() / c;
}

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(const BackendOptions& options) {
    threads_ = options.num_threads > 0 ? options.num_threads : omp_get_max_threads();  // honours OMP_NUM_THREADS
    openblas_set_num_threads(1);  // Linear parallelises over output features itself
  }

  std::string name() const override { return "cpu"; }
  DType act_dtype() const override { return DType::kF32; }

  absl::StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) override {
    SQA_ASSIGN_OR_RETURN(auto buf, CpuBuffer::Make(bytes));
    return std::unique_ptr<DeviceBuffer>(std::move(buf));
  }
  absl::Status CopyToHost(const TensorView& src, void* dst) override {
    if (src.nbytes() > 0) std::memcpy(dst, src.data, src.nbytes());
    return absl::OkStatus();
  }
  absl::Status CopyFromHost(const void* src, const TensorView& dst) override {
    if (dst.nbytes() > 0) std::memcpy(dst.data, src, dst.nbytes());
    return absl::OkStatus();
  }
  absl::Status Synchronize() override { return absl::OkStatus(); }

  absl::StatusOr<BackendWeight> UploadWeight(const TensorView& host) override {
    BackendWeight w;
    if (host.dtype == DType::kF32) {
      w.view = host;  // used in place: a view into the mapped file
      return w;
    }
    if (host.dtype != DType::kBF16 && host.dtype != DType::kF16) {
      return absl::InvalidArgumentError(absl::StrCat("cannot use a ", std::string(DTypeName(host.dtype)), " tensor as a weight"));
    }
    const int64_t n = host.numel();
    SQA_ASSIGN_OR_RETURN(auto buf, CpuBuffer::Make(static_cast<size_t>(n) * sizeof(float)));
    float* dst = static_cast<float*>(buf->data());
    const size_t esz = DTypeSize(host.dtype);
    const int64_t chunk = 1 << 16;
    const int64_t nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) num_threads(threads_)
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t b = c * chunk, e = std::min(n, b + chunk);
      ConvertToF32(static_cast<const uint8_t*>(host.data) + b * esz, host.dtype, static_cast<size_t>(e - b), dst + b);
    }
    w.view = host;
    w.view.data = dst;
    w.view.dtype = DType::kF32;
    w.view.space = MemSpace::kDevice;
    w.storage = std::move(buf);
    return w;
  }

  absl::Status Embed(const TensorView& table, const int32_t* tokens, int64_t n, const TensorView& out) override {
    SQA_RETURN_IF_ERROR(CheckF32(table, "Embed table"));
    SQA_RETURN_IF_ERROR(CheckF32(out, "Embed out"));
    SQA_RETURN_IF_ERROR(CheckRank(table, 2, "Embed table"));
    const int64_t vocab = table.dim(0), d = table.dim(1);
    if (Rows(out) != n || Cols(out) != d) {
      return absl::InvalidArgumentError(absl::StrCat("Embed: out ", Shape(out), " for ", n, " tokens of width ", d));
    }
    for (int64_t i = 0; i < n; ++i) {
      if (tokens[i] < 0 || tokens[i] >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " is outside the vocabulary [0, ", vocab, ")"));
      }
    }
    const float* tab = table.as<float>();
    float* o = out.as<float>();
    for (int64_t i = 0; i < n; ++i) std::memcpy(o + i * d, tab + tokens[i] * d, static_cast<size_t>(d) * sizeof(float));
    return absl::OkStatus();
  }

  absl::Status RmsNorm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out) override {
    SQA_RETURN_IF_ERROR(CheckF32(x, "RmsNorm x"));
    SQA_RETURN_IF_ERROR(CheckF32(weight, "RmsNorm weight"));
    SQA_RETURN_IF_ERROR(CheckF32(out, "RmsNorm out"));
    const int64_t n = Rows(x), d = Cols(x);
    if (weight.numel() != d || out.numel() != x.numel()) {
      return absl::InvalidArgumentError(
          absl::StrCat("RmsNorm: x ", Shape(x), ", weight ", Shape(weight), ", out ", Shape(out)));
    }
    const float* xp = x.as<float>();
    const float* w = weight.as<float>();
    float* o = out.as<float>();
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads_) if (n * d > (1 << 18))
    for (int64_t i = 0; i < n; ++i) {
      const float* r = xp + i * d;
      double ss = 0;
      for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(r[j]) * r[j];
      const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(d) + eps));
      float* orow = o + i * d;
      for (int64_t j = 0; j < d; ++j) orow[j] = r[j] * inv * w[j];
    }
    return absl::OkStatus();
  }

  absl::Status Linear(const TensorView& x, const TensorView& w, const TensorView& out) override {
    SQA_RETURN_IF_ERROR(CheckF32(x, "Linear x"));
    SQA_RETURN_IF_ERROR(CheckF32(w, "Linear weight"));
    SQA_RETURN_IF_ERROR(CheckF32(out, "Linear out"));
    SQA_RETURN_IF_ERROR(CheckRank(w, 2, "Linear weight"));
    const int64_t n = Rows(x), in = Cols(x), of = w.dim(0);
    if (w.dim(1) != in || Rows(out) != n || Cols(out) != of) {
      return absl::InvalidArgumentError(
          absl::StrCat("Linear: x ", Shape(x), ", weight ", Shape(w), ", out ", Shape(out)));
    }
    if (n == 0 || of == 0) return absl::OkStatus();
    // One thread pool only: OpenBLAS runs single-threaded and OpenMP splits the work. Two spinning
    // pools on the same cores (OpenBLAS's pthreads and OpenMP's) slow each other down badly.
    // Many rows: split rows into dynamically scheduled chunks (each chunk packs W once, a few
    // percent of its work; a descheduled thread does not hold up the others). Few rows (decode):
    // split the output features so that each thread streams its own slice of W.
    const float* xp = x.as<float>();
    const float* wp = w.as<float>();
    float* op = out.as<float>();
    const double work = static_cast<double>(n) * static_cast<double>(in) * static_cast<double>(of);
    const int nt = work < (1 << 22) ? 1 : threads_;
    auto gemm = [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      if (r1 - r0 <= cpu::kSmallGemmMaxRows) {
        cpu::SmallGemmF32(xp + r0 * in, r1 - r0, in, wp, c0, c1, op + r0 * of, of);
        return;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(r1 - r0), static_cast<blasint>(c1 - c0),
                  static_cast<blasint>(in), 1.f, xp + r0 * in, static_cast<blasint>(in), wp + c0 * in,
                  static_cast<blasint>(in), 0.f, op + r0 * of + c0, static_cast<blasint>(of));
    };
    if (nt == 1) {
      gemm(0, n, 0, of);
    } else if (n >= 64 * nt) {
      const int64_t rows = std::max<int64_t>(64, (n / (4 * nt) + 15) / 16 * 16);
      const int64_t chunks = (n + rows - 1) / rows;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
      for (int64_t c = 0; c < chunks; ++c) gemm(c * rows, std::min(n, (c + 1) * rows), 0, of);
    } else {
      const int64_t cols = std::max<int64_t>(16, (of / (4 * nt) + 15) / 16 * 16);
      const int64_t chunks = (of + cols - 1) / cols;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
      for (int64_t c = 0; c < chunks; ++c) gemm(0, n, c * cols, std::min(of, (c + 1) * cols));
    }
    return absl::OkStatus();
  }

  absl::Status AddInPlace(const TensorView& x, const TensorView& y) override {
    SQA_RETURN_IF_ERROR(CheckF32(x, "AddInPlace x"));
    SQA_RETURN_IF_ERROR(CheckF32(y, "AddInPlace y"));
    if (x.numel() != y.numel()) {
      return absl::InvalidArgumentError(absl::StrCat("AddInPlace: x ", Shape(x), " vs y ", Shape(y)));
    }
    float* a = x.as<float>();
    const float* b = y.as<float>();
    const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static) num_threads(threads_) if (n > (1 << 18))
    for (int64_t i = 0; i < n; ++i) a[i] += b[i];
    return absl::OkStatus();
  }

  absl::Status Rope(const TensorView& x, const int32_t* positions, const RopeArgs& rope) override {
    SQA_RETURN_IF_ERROR(CheckF32(x, "Rope x"));
    SQA_RETURN_IF_ERROR(CheckRank(x, 3, "Rope x"));
    const int64_t n = x.dim(0), heads = x.dim(1), dh = x.dim(2);
    if (dh % 2 != 0) return absl::InvalidArgumentError(absl::StrCat("Rope: head_dim ", dh, " is odd"));
    if (!(rope.position_scale > 0) || !(rope.theta > 0)) {
      return absl::InvalidArgumentError("Rope: theta and position_scale must be positive");
    }
    int32_t max_pos = -1;
    for (int64_t i = 0; i < n; ++i) {
      if (positions[i] < 0) return absl::InvalidArgumentError(absl::StrCat("Rope: negative position ", positions[i]));
      max_pos = std::max(max_pos, positions[i]);
    }
    EnsureRopeTable(rope, dh, max_pos);
    const int64_t half = dh / 2;
    float* xp = x.as<float>();
    const float* table = rope_table_.data();
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads_) if (n * heads * dh > (1 << 18))
    for (int64_t i = 0; i < n; ++i) {
      const float* cs = table + static_cast<int64_t>(positions[i]) * dh;  // [cos(half) | sin(half)]
      for (int64_t h = 0; h < heads; ++h) {
        float* r = xp + (i * heads + h) * dh;
        for (int64_t j = 0; j < half; ++j) {
          const float c = cs[j], s = cs[half + j];
          const float x1 = r[j], x2 = r[half + j];
          r[j] = x1 * c - x2 * s;
          r[half + j] = x2 * c + x1 * s;
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status SwiGlu(const TensorView& gate, const TensorView& up, const TensorView& out) override {
    SQA_RETURN_IF_ERROR(CheckF32(gate, "SwiGlu gate"));
    SQA_RETURN_IF_ERROR(CheckF32(up, "SwiGlu up"));
    SQA_RETURN_IF_ERROR(CheckF32(out, "SwiGlu out"));
    const int64_t n = gate.numel();
    if (up.numel() != n || out.numel() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("SwiGlu: gate ", Shape(gate), ", up ", Shape(up), ", out ", Shape(out)));
    }
    const float* g = gate.as<float>();
    const float* u = up.as<float>();
    float* o = out.as<float>();
    const int64_t nv = n / 16;
#pragma omp parallel for schedule(dynamic, 1024) num_threads(threads_) if (n > (1 << 18))
    for (int64_t c = 0; c < nv; ++c) {
      const cpu::v16f gv = cpu::Load(g + c * 16), uv = cpu::Load(u + c * 16);
      const cpu::v16f e = cpu::Exp(-gv);
      cpu::Store(o + c * 16, gv / (1.f + e) * uv);
    }
    for (int64_t i = nv * 16; i < n; ++i) o[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
    return absl::OkStatus();
  }

  absl::Status GatherRows(const TensorView& x, const int64_t* rows, int64_t m, const TensorView& out) override {
    SQA_RETURN_IF_ERROR(CheckF32(x, "GatherRows x"));
    SQA_RETURN_IF_ERROR(CheckF32(out, "GatherRows out"));
    const int64_t n = Rows(x), d = Cols(x);
    if (Rows(out) != m || Cols(out) != d) {
      return absl::InvalidArgumentError(absl::StrCat("GatherRows: x ", Shape(x), ", ", m, " rows, out ", Shape(out)));
    }
    for (int64_t i = 0; i < m; ++i) {
      if (rows[i] < 0 || rows[i] >= n) {
        return absl::InvalidArgumentError(absl::StrCat("GatherRows: row ", rows[i], " outside [0, ", n, ")"));
      }
    }
    const float* xp = x.as<float>();
    float* o = out.as<float>();
    for (int64_t i = 0; i < m; ++i) std::memcpy(o + i * d, xp + rows[i] * d, static_cast<size_t>(d) * sizeof(float));
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<KvCacheStorage>> CreateKvCache(const KvCacheShape& shape) override {
    if (shape.num_layers <= 0 || shape.num_blocks <= 0 || shape.block_size <= 0 || shape.num_kv_heads <= 0 ||
        shape.head_dim <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("bad KV cache shape: layers ", shape.num_layers, ", blocks ",
                                                     shape.num_blocks, ", block_size ", shape.block_size,
                                                     ", kv heads ", shape.num_kv_heads, ", head_dim ", shape.head_dim));
    }
    if (shape.num_blocks > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError("too many KV blocks");
    }
    const size_t bytes =
        static_cast<size_t>(shape.num_layers * shape.num_blocks * 2 * shape.block_elems()) * sizeof(float);
    SQA_ASSIGN_OR_RETURN(auto buf, CpuBuffer::Make(bytes));
    return std::unique_ptr<KvCacheStorage>(new CpuKvCache(shape, std::move(buf)));
  }

  absl::Status WriteKv(KvCacheStorage& cache, int64_t layer, const TensorView& k, const TensorView& v,
                       const int64_t* slots) override {
    auto* kv = dynamic_cast<CpuKvCache*>(&cache);
    if (kv == nullptr) return absl::InvalidArgumentError("WriteKv: the cache was not made by the CPU backend");
    const KvCacheShape& s = kv->shape();
    SQA_RETURN_IF_ERROR(CheckF32(k, "WriteKv k"));
    SQA_RETURN_IF_ERROR(CheckF32(v, "WriteKv v"));
    SQA_RETURN_IF_ERROR(CheckRank(k, 3, "WriteKv k"));
    if (layer < 0 || layer >= s.num_layers) return absl::InvalidArgumentError(absl::StrCat("WriteKv: bad layer ", layer));
    if (k.dim(1) != s.num_kv_heads || k.dim(2) != s.head_dim || v.shape != k.shape) {
      return absl::InvalidArgumentError(absl::StrCat("WriteKv: k ", Shape(k), ", v ", Shape(v), " for cache with ",
                                                     s.num_kv_heads, " heads of ", s.head_dim));
    }
    const int64_t n = k.dim(0), hkv = s.num_kv_heads, dh = s.head_dim, bs = s.block_size;
    for (int64_t i = 0; i < n; ++i) {
      if (slots[i] < 0 || slots[i] >= s.num_blocks * bs) {
        return absl::InvalidArgumentError(absl::StrCat("WriteKv: slot ", slots[i], " outside the cache"));
      }
    }
    float* base = kv->layer_base(layer);
    const int64_t stride = kv->block_stride(), voff = s.block_elems();
    const float* kp = k.as<float>();
    const float* vp = v.as<float>();
#pragma omp parallel for schedule(static) num_threads(threads_) if (n * hkv * dh > (1 << 18))
    for (int64_t i = 0; i < n; ++i) {
      const int64_t blk = slots[i] / bs, off = slots[i] % bs;
      for (int64_t h = 0; h < hkv; ++h) {
        float* dst = base + blk * stride + (h * bs + off) * dh;
        std::memcpy(dst, kp + (i * hkv + h) * dh, static_cast<size_t>(dh) * sizeof(float));
        std::memcpy(dst + voff, vp + (i * hkv + h) * dh, static_cast<size_t>(dh) * sizeof(float));
      }
    }
    return absl::OkStatus();
  }

  absl::Status AttentionPrefill(const PrefillAttentionArgs& a) override {
    SQA_ASSIGN_OR_RETURN(const CpuKvCache* kv, CheckCache(a.cache, a.layer));
    const KvCacheShape& s = kv->shape();
    SQA_RETURN_IF_ERROR(CheckF32(a.q, "AttentionPrefill q"));
    SQA_RETURN_IF_ERROR(CheckF32(a.out, "AttentionPrefill out"));
    SQA_RETURN_IF_ERROR(CheckRank(a.q, 3, "AttentionPrefill q"));
    const int64_t n = a.q.dim(0), hq = a.q.dim(1);
    SQA_ASSIGN_OR_RETURN(int64_t ha, CheckHeads(hq, a.q.dim(2), s));
    if (a.out.shape != std::vector<int64_t>{n, ha, s.head_dim}) {
      return absl::InvalidArgumentError(absl::StrCat("AttentionPrefill: out ", Shape(a.out), ", expected ",
                                                     ShapeString({n, ha, s.head_dim})));
    }
    if (a.q_pos0 < 0 || a.kv.kv_len < 0) return absl::InvalidArgumentError("AttentionPrefill: negative position");
    if (a.causal && a.kv.kv_len < a.q_pos0 + n) {
      return absl::InvalidArgumentError(absl::StrCat("AttentionPrefill: kv_len ", a.kv.kv_len,
                                                     " does not include the queries' positions up to ", a.q_pos0 + n));
    }
    SQA_RETURN_IF_ERROR(CheckTable(a.kv, s));
    cpu::PrefillProblem p;
    p.kv = Layout(*kv, a.layer);
    p.block_table = a.kv.block_table;
    p.kv_len = a.kv.kv_len;
    p.q = a.q.as<float>();
    p.n = n;
    p.hq = hq;
    p.q_pos0 = a.q_pos0;
    p.causal = a.causal;
    p.scale = a.scale > 0 ? a.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
    p.out = a.out.as<float>();
    p.lse = a.lse;
    cpu::AttentionPrefillF32(p, threads_);
    return absl::OkStatus();
  }

  absl::Status AttentionDecode(const DecodeAttentionArgs& a) override {
    SQA_ASSIGN_OR_RETURN(const CpuKvCache* kv, CheckCache(a.cache, a.layer));
    const KvCacheShape& s = kv->shape();
    SQA_RETURN_IF_ERROR(CheckF32(a.q, "AttentionDecode q"));
    SQA_RETURN_IF_ERROR(CheckF32(a.out, "AttentionDecode out"));
    SQA_RETURN_IF_ERROR(CheckRank(a.q, 3, "AttentionDecode q"));
    const int64_t b = a.q.dim(0), hq = a.q.dim(1);
    SQA_ASSIGN_OR_RETURN(int64_t ha, CheckHeads(hq, a.q.dim(2), s));
    if (static_cast<int64_t>(a.seqs.size()) != b) {
      return absl::InvalidArgumentError(
          absl::StrCat("AttentionDecode: ", b, " queries but ", a.seqs.size(), " sequences"));
    }
    if (a.out.shape != std::vector<int64_t>{b, ha, s.head_dim}) {
      return absl::InvalidArgumentError(absl::StrCat("AttentionDecode: out ", Shape(a.out), ", expected ",
                                                     ShapeString({b, ha, s.head_dim})));
    }
    decode_seqs_.resize(static_cast<size_t>(b));
    for (int64_t i = 0; i < b; ++i) {
      SQA_RETURN_IF_ERROR(CheckTable(a.seqs[i], s));
      decode_seqs_[i] = {a.seqs[i].block_table, a.seqs[i].kv_len};
    }
    cpu::DecodeProblem p;
    p.kv = Layout(*kv, a.layer);
    p.seqs = decode_seqs_.data();
    p.batch = b;
    p.q = a.q.as<float>();
    p.hq = hq;
    p.scale = a.scale > 0 ? a.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.head_dim)));
    p.out = a.out.as<float>();
    p.lse = a.lse;
    cpu::AttentionDecodeF32(p, threads_);
    return absl::OkStatus();
  }

  absl::Status MergeAttention(absl::Span<const TensorView> outs, absl::Span<const float* const> lses,
                              const TensorView& out, float* lse_out) override {
    if (outs.empty() || outs.size() != lses.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("MergeAttention: ", outs.size(), " outputs and ", lses.size(), " LSE arrays"));
    }
    SQA_RETURN_IF_ERROR(CheckF32(out, "MergeAttention out"));
    SQA_RETURN_IF_ERROR(CheckRank(out, 3, "MergeAttention out"));
    for (const TensorView& o : outs) {
      SQA_RETURN_IF_ERROR(CheckF32(o, "MergeAttention input"));
      if (o.shape != out.shape) {
        return absl::InvalidArgumentError(absl::StrCat("MergeAttention: input ", Shape(o), " vs out ", Shape(out)));
      }
    }
    for (const float* l : lses) {
      if (l == nullptr) return absl::InvalidArgumentError("MergeAttention: null LSE");
    }
    const int64_t rows = out.dim(0) * out.dim(1), dh = out.dim(2);
    const size_t ns = outs.size();
    float* o = out.as<float>();
#pragma omp parallel num_threads(threads_) if (rows * dh * static_cast<int64_t>(ns) > (1 << 18))
    {
      std::vector<float> acc(static_cast<size_t>(dh));
      std::vector<double> w(ns);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        double m = -std::numeric_limits<double>::infinity();
        for (size_t s = 0; s < ns; ++s) m = std::max(m, static_cast<double>(lses[s][r]));
        if (m == -std::numeric_limits<double>::infinity()) {
          std::fill(o + r * dh, o + (r + 1) * dh, 0.f);
          if (lse_out != nullptr) lse_out[r] = -std::numeric_limits<float>::infinity();
          continue;
        }
        double sum = 0;
        for (size_t s = 0; s < ns; ++s) sum += std::exp(static_cast<double>(lses[s][r]) - m);
        const double L = m + std::log(sum);
        std::fill(acc.begin(), acc.end(), 0.f);
        for (size_t s = 0; s < ns; ++s) {
          const double ws = std::exp(static_cast<double>(lses[s][r]) - L);
          if (ws == 0) continue;
          const float wf = static_cast<float>(ws);
          const float* src = outs[s].as<float>() + r * dh;
          for (int64_t d = 0; d < dh; ++d) acc[d] += wf * src[d];
        }
        std::copy(acc.begin(), acc.end(), o + r * dh);
        if (lse_out != nullptr) lse_out[r] = static_cast<float>(L);
      }
    }
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<const CpuKvCache*> CheckCache(const KvCacheStorage* cache, int64_t layer) const {
    auto* kv = dynamic_cast<const CpuKvCache*>(cache);
    if (kv == nullptr) return absl::InvalidArgumentError("attention: the cache was not made by the CPU backend");
    if (layer < 0 || layer >= kv->shape().num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("attention: bad layer ", layer));
    }
    return kv;
  }
  static absl::StatusOr<int64_t> CheckHeads(int64_t hq, int64_t dh, const KvCacheShape& s) {
    const int64_t hkv = s.num_kv_heads, ha = std::max(hq, hkv);
    if (dh != s.head_dim || hq <= 0 || ha % hq != 0 || ha % hkv != 0) {
      return absl::InvalidArgumentError(absl::StrCat("attention: ", hq, " query heads of ", dh, " with ", hkv,
                                                     " KV heads of ", s.head_dim,
                                                     " (one head count must divide the other)"));
    }
    return ha;
  }
  static absl::Status CheckTable(const KvSequenceRef& ref, const KvCacheShape& s) {
    if (ref.kv_len < 0) return absl::InvalidArgumentError("attention: negative kv_len");
    const int64_t nb = (ref.kv_len + s.block_size - 1) / s.block_size;
    if (nb > 0 && ref.block_table == nullptr) return absl::InvalidArgumentError("attention: null block table");
    for (int64_t i = 0; i < nb; ++i) {
      if (ref.block_table[i] < 0 || ref.block_table[i] >= s.num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("attention: block id ", ref.block_table[i], " outside [0, ",
                                                       s.num_blocks, ")"));
      }
    }
    return absl::OkStatus();
  }
  static cpu::KvLayout Layout(const CpuKvCache& kv, int64_t layer) {
    cpu::KvLayout l;
    l.base = kv.layer_base(layer);
    l.block_stride = kv.block_stride();
    l.v_offset = kv.shape().block_elems();
    l.block_size = kv.shape().block_size;
    l.num_kv_heads = kv.shape().num_kv_heads;
    l.head_dim = kv.shape().head_dim;
    return l;
  }

  // cos/sin per position: [pos][cos(dh/2) | sin(dh/2)], angles computed in double.
  void EnsureRopeTable(const RopeArgs& rope, int64_t dh, int32_t max_pos) {
    if (rope.theta != rope_theta_ || rope.position_scale != rope_scale_ || dh != rope_dh_) {
      rope_table_.clear();
      rope_positions_ = 0;
      rope_theta_ = rope.theta;
      rope_scale_ = rope.position_scale;
      rope_dh_ = dh;
    }
    if (max_pos < rope_positions_) return;
    int64_t want = std::max<int64_t>(max_pos + 1, std::max<int64_t>(1024, rope_positions_ * 2));
    const int64_t half = dh / 2;
    rope_table_.resize(static_cast<size_t>(want * dh));
    for (int64_t p = rope_positions_; p < want; ++p) {
      for (int64_t i = 0; i < half; ++i) {
        const double inv_freq = std::pow(rope.theta, -2.0 * static_cast<double>(i) / static_cast<double>(dh));
        const double angle = static_cast<double>(p) / rope.position_scale * inv_freq;
        rope_table_[p * dh + i] = static_cast<float>(std::cos(angle));
        rope_table_[p * dh + half + i] = static_cast<float>(std::sin(angle));
      }
    }
    rope_positions_ = want;
  }

  int threads_ = 1;
  std::vector<cpu::DecodeSeq> decode_seqs_;
  std::vector<float> rope_table_;
  int64_t rope_positions_ = 0;
  double rope_theta_ = 0, rope_scale_ = 0;
  int64_t rope_dh_ = 0;
};

// OpenBLAS 0.3.21 (Debian 12) does not recognise recent Xeons (e.g. Emerald Rapids, model 207)
// and falls back to its SSE3 "Prescott" kernels, about 4x slower than its AVX-512 ones. When the
// library is a DYNAMIC_ARCH build that did exactly that, the user has not chosen a core type
// (OPENBLAS_CORETYPE), and the CPU has AVX-512, re-run OpenBLAS's own core selection with
// OPENBLAS_CORETYPE=SkylakeX. Symbols are looked up at run time, so other BLAS builds are untouched.
void FixOpenBlasCoreType() {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512dq") || !__builtin_cpu_supports("avx512vl")) {
    return;
  }
  using NameFn = char* (*)();
  using VoidFn = void (*)();
  auto corename = reinterpret_cast<NameFn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  auto quit = reinterpret_cast<VoidFn>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_quit"));
  auto init = reinterpret_cast<VoidFn>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init"));
  if (corename == nullptr || quit == nullptr || init == nullptr) return;
  const char* name = corename();
  if (name == nullptr || std::strcmp(name, "Prescott") != 0) return;
  setenv("OPENBLAS_CORETYPE", "SkylakeX", 0);
  quit();
  init();
  SQA_VLOG(1) << "OpenBLAS picked Prescott kernels on an AVX-512 CPU; switched to " << corename();
}

}  // namespace

void EnsureOpenBlasKernels() {
  static std::once_flag blas_fix;
  std::call_once(blas_fix, FixOpenBlasCoreType);
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const BackendOptions& options) {
  EnsureOpenBlasKernels();
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_threads must be >= 0, got ", options.num_threads));
  }
  return std::unique_ptr<Backend>(new CpuBackend(options));
}

}  // namespace sqa
