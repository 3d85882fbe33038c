// The CUDA backend (see cuda_backend.h). Host code only: kernels live in elementwise.cu and in the
// attention_*.cu files of attention.h; GEMMs go through gemm.h (cuBLASLt).
//
// Memory. Weights and the KV cache use cudaMalloc (long-lived). Activations from Allocate() come
// from the device's stream-ordered pool (cudaMallocAsync / cudaFreeAsync on the backend's stream)
// with an unbounded release threshold, so the engine can allocate per forward pass without
// synchronizing the device. Buffers keep the stream alive through a shared Context, so they may
// outlive the backend.
//
// Host arrays (tokens, positions, slots, block tables) go through HostStager: each call packs its
// arrays into a pinned ring buffer and issues one async copy into a device buffer kept per kind of
// array; an array equal to the one last staged for its kind is not copied again (a decode step's
// block tables serve every layer). A ring region is reused only after the event recorded behind
// its copy has completed, so the host never waits on the GPU unless the ring is full.
//
// Step graphs (StepGraphs, used by the engine for decode steps). The engine writes a step's host
// arrays into one pinned block with a device mirror (cudaMalloc, fixed until it must grow) and
// uploads it in one copy; HostStager hands out mirror addresses for arrays inside the block
// instead of staging them. A step is captured on the backend's stream (thread-local capture
// mode) into a cudaGraphExec kept per engine-chosen key. Graphs record the addresses they read;
// the backend's own buffers that graphs read (the mirror, the step workspaces of decode attention
// and sampling) are grow-only, and growing one bumps a generation that makes every graph stale.
// While capturing, nothing may allocate or stage outside the block: such calls fail, the capture
// is abandoned and the engine runs the step eagerly.
#include "workers/engine/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstddef>
#include <deque>
#include <unordered_map>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "services/common/status.h"
#include "workers/engine/cuda/attention.h"
#include "workers/engine/cuda/cuda_check.h"
#include "workers/engine/cuda/elementwise.h"
#include "workers/engine/cuda/gemm.h"
#include "workers/engine/cuda/raii.h"
#include "workers/engine/cuda/sampling_kernels.h"
#include "workers/engine/cuda/skinny_gemm.h"

namespace sqa {
namespace {

using cuda::CudaEvent;
using cuda::DTypeStr;
using cuda::CudaStream;
using cuda::DeviceMemory;
using cuda::PinnedHostMemory;

// State shared by the backend and every buffer it hands out.
struct Context {
  int device = 0;
  CudaStream stream;
  ~Context() {
    if (stream) {
      cudaSetDevice(device);
      cudaStreamSynchronize(stream.get());
    }
  }
};

// Stream-ordered activation memory.
class PoolBuffer final : public DeviceBuffer {
 public:
  PoolBuffer(std::shared_ptr<Context> ctx, void* p, size_t n) : ctx_(std::move(ctx)), p_(p), n_(n) {}
  ~PoolBuffer() override {
    if (p_) {
      cudaSetDevice(ctx_->device);
      cudaFreeAsync(p_, ctx_->stream.get());
    }
  }
  void* data() override { return p_; }
  size_t size() const override { return n_; }

 private:
  std::shared_ptr<Context> ctx_;
  void* p_;
  size_t n_;
};

// Long-lived memory (weights).
class StaticBuffer final : public DeviceBuffer {
 public:
  StaticBuffer(std::shared_ptr<Context> ctx, DeviceMemory mem) : ctx_(std::move(ctx)), mem_(std::move(mem)) {}
  ~StaticBuffer() override {
    // cudaFree waits for the device, so work still reading the weight finishes first.
    cudaSetDevice(ctx_->device);
    mem_.reset();
  }
  void* data() override { return mem_.get(); }
  size_t size() const override { return mem_.size(); }

 private:
  std::shared_ptr<Context> ctx_;
  DeviceMemory mem_;
};

class CudaKvCache final : public KvCacheStorage {
 public:
  CudaKvCache(std::shared_ptr<Context> ctx, const KvCacheShape& shape, DeviceMemory k, DeviceMemory v)
      : ctx_(std::move(ctx)), shape_(shape), k_(std::move(k)), v_(std::move(v)) {}
  ~CudaKvCache() override {
    cudaSetDevice(ctx_->device);
    k_.reset();
    v_.reset();
  }
  const KvCacheShape& shape() const override { return shape_; }
  size_t bytes_per_block() const override { return 2 * static_cast<size_t>(shape_.block_elems()) * 2; }
  size_t layer_bytes() const { return static_cast<size_t>(shape_.num_blocks * shape_.block_elems()) * 2; }
  void* k(int64_t layer) const { return static_cast<char*>(k_.get()) + layer * layer_bytes(); }
  void* v(int64_t layer) const { return static_cast<char*>(v_.get()) + layer * layer_bytes(); }

 private:
  std::shared_ptr<Context> ctx_;
  KvCacheShape shape_;
  DeviceMemory k_, v_;
};

// What a staged array is for. Each kind has its own device buffer, so an array that the engine
// passes again unchanged (the positions for the q and k RoPE, a block table used by every layer)
// is copied once and reused.
enum class Staged { kTokens, kPositions, kSlots, kRows, kPrefillTable, kDecodeTables, kSampleParams, kCount };

// Packs a call's host arrays into a pinned ring and copies them to the device with one async copy,
// unless the device copy of that kind already holds exactly these bytes.
class HostStager {
 public:
  struct Item {
    const void* src;
    size_t bytes;
    const void** dev;  // receives the device address
  };

  absl::Status Init(std::shared_ptr<Context> ctx) {
    ctx_ = std::move(ctx);
    SQA_ASSIGN_OR_RETURN(ring_, PinnedHostMemory::Allocate(kInitialBytes));
    return absl::OkStatus();
  }

  ~HostStager() {
    for (Slot& sl : slots_) {
      if (sl.dev) cudaFreeAsync(sl.dev, ctx_->stream.get());
    }
  }

  // The step input block: arrays inside it are read from its device mirror, never staged.
  void SetBlock(const void* host, void* dev, size_t bytes) {
    block_host_ = static_cast<const char*>(host);
    block_dev_ = static_cast<char*>(dev);
    block_bytes_ = bytes;
  }
  // During a graph capture, staging (a copy the graph would replay from a reused ring) is refused.
  void SetCapturing(bool on) { capturing_ = on; }

  // `in_block` (optional) tells whether the arrays came from the step input block.
  absl::Status Stage(Staged kind, std::initializer_list<Item> items, bool* in_block = nullptr) {
    bool inside = block_host_ != nullptr;
    for (const Item& it : items) {
      const char* p = static_cast<const char*>(it.src);
      if (it.bytes == 0) continue;
      inside = inside && p >= block_host_ && p + it.bytes <= block_host_ + block_bytes_;
    }
    if (in_block != nullptr) *in_block = inside;
    if (inside) {
      for (const Item& it : items) {
        *it.dev = it.bytes ? block_dev_ + (static_cast<const char*>(it.src) - block_host_) : nullptr;
      }
      return absl::OkStatus();
    }
    if (capturing_) {
      return absl::FailedPreconditionError("a host array outside the step input block was passed during a graph capture");
    }
    Slot& sl = slots_[static_cast<int>(kind)];
    size_t total = 0;
    for (const Item& it : items) total += Align(it.bytes);
    packed_.assign(total, 0);
    size_t off = 0;
    for (const Item& it : items) {
      if (it.bytes) std::memcpy(packed_.data() + off, it.src, it.bytes);
      off += Align(it.bytes);
    }
    auto hand_out = [&]() {
      size_t o = 0;
      for (const Item& it : items) {
        *it.dev = it.bytes ? static_cast<char*>(sl.dev) + o : nullptr;
        o += Align(it.bytes);
      }
    };
    if (total == 0 || (sl.valid && sl.last == packed_)) {
      hand_out();
      return absl::OkStatus();
    }
    cudaStream_t s = ctx_->stream.get();
    sl.valid = false;
    // The kind's device buffer is rewritten in stream order after every kernel that read it.
    if (total > sl.dev_bytes) {
      const size_t want = std::max(total, sl.dev_bytes * 2);
      if (sl.dev) SQA_GPU_RETURN_IF_ERROR(cudaFreeAsync(sl.dev, s));
      sl.dev = nullptr;
      sl.dev_bytes = 0;
      SQA_GPU_RETURN_IF_ERROR(cudaMallocAsync(&sl.dev, want, s));
      sl.dev_bytes = want;
    }
    // Pinned ring: grow (after draining) when one call needs more than a quarter of it.
    if (total * 4 > ring_.size()) {
      SQA_GPU_RETURN_IF_ERROR(cudaStreamSynchronize(s));
      pending_.clear();
      head_ = 0;
      SQA_ASSIGN_OR_RETURN(ring_, PinnedHostMemory::Allocate(std::max(total * 8, ring_.size() * 2)));
    }
    if (head_ + total > ring_.size()) head_ = 0;
    const size_t begin = head_, end = head_ + total;
    // Wait for the newest earlier copy whose ring region overlaps ours (events on one stream
    // complete in order, so everything older is done too).
    int last_overlap = -1;
    for (int i = 0; i < static_cast<int>(pending_.size()); ++i) {
      if (pending_[i].begin < end && begin < pending_[i].end) last_overlap = i;
    }
    if (last_overlap >= 0) {
      SQA_GPU_RETURN_IF_ERROR(cudaEventSynchronize(pending_[last_overlap].event.get()));
      for (int i = 0; i <= last_overlap; ++i) {
        free_events_.push_back(std::move(pending_.front().event));
        pending_.pop_front();
      }
    }
    char* host = static_cast<char*>(ring_.get()) + begin;
    std::memcpy(host, packed_.data(), total);
    SQA_GPU_RETURN_IF_ERROR(cudaMemcpyAsync(sl.dev, host, total, cudaMemcpyHostToDevice, s));
    CudaEvent ev;
    if (!free_events_.empty()) {
      ev = std::move(free_events_.back());
      free_events_.pop_back();
    } else {
      SQA_ASSIGN_OR_RETURN(ev, CudaEvent::Create());
    }
    SQA_GPU_RETURN_IF_ERROR(cudaEventRecord(ev.get(), s));
    pending_.push_back(Pending{begin, end, std::move(ev)});
    head_ = end;
    sl.last.swap(packed_);
    sl.valid = true;
    hand_out();
    return absl::OkStatus();
  }

 private:
  static constexpr size_t kInitialBytes = size_t{4} << 20;
  static size_t Align(size_t b) { return (b + 255) & ~size_t{255}; }
  struct Pending {
    size_t begin, end;
    CudaEvent event;
  };
  struct Slot {
    void* dev = nullptr;
    size_t dev_bytes = 0;
    std::vector<char> last;  // bytes the device buffer holds (valid only if `valid`)
    bool valid = false;
  };
  std::shared_ptr<Context> ctx_;
  const char* block_host_ = nullptr;
  char* block_dev_ = nullptr;
  size_t block_bytes_ = 0;
  bool capturing_ = false;
  PinnedHostMemory ring_;
  size_t head_ = 0;
  std::deque<Pending> pending_;
  std::vector<CudaEvent> free_events_;
  Slot slots_[static_cast<int>(Staged::kCount)];
  std::vector<char> packed_;
};

absl::Status ExpectDevice(const TensorView& t, const char* op, const char* what) {
  if (t.space != MemSpace::kDevice || t.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " must be a device tensor of the CUDA backend"));
  }
  return absl::OkStatus();
}

absl::Status ExpectShape(const TensorView& t, const std::vector<int64_t>& shape, const char* op, const char* what) {
  if (t.shape != shape) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", what, " has shape ", ShapeString(t.shape), ", expected ", ShapeString(shape)));
  }
  return absl::OkStatus();
}

absl::Status ExpectDType(const TensorView& t, DType want, const char* op, const char* what) {
  if (t.dtype != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", what, " has dtype ", DTypeStr(t.dtype), ", expected ", DTypeStr(want)));
  }
  return absl::OkStatus();
}

bool IsAct(DType t) { return t == DType::kF32 || t == DType::kBF16; }

absl::Status ExpectAct(const TensorView& t, const char* op, const char* what) {
  SQA_RETURN_IF_ERROR(ExpectDevice(t, op, what));
  if (!IsAct(t.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", what, " has dtype ", DTypeStr(t.dtype),
                                                   "; the CUDA backend takes bf16 or f32 activations"));
  }
  return absl::OkStatus();
}

struct GraphExecDeleter {
  void operator()(cudaGraphExec_t g) const { cudaGraphExecDestroy(g); }
};
using GraphExec = cuda::UniqueHandle<cudaGraphExec_t, GraphExecDeleter>;

// The engine-facing side of the step graphs; the state lives in CudaBackend.
class CudaBackend;
class CudaStepGraphs final : public StepGraphs {
 public:
  explicit CudaStepGraphs(CudaBackend* b) : b_(b) {}
  absl::StatusOr<void*> Inputs(size_t bytes) override;
  absl::Status Upload(size_t bytes) override;
  bool Has(uint64_t key) const override;
  absl::Status Replay(uint64_t key) override;
  absl::Status BeginCapture() override;
  absl::Status EndCapture(uint64_t key) override;
  void AbortCapture() override;
  void Invalidate() override;
  int64_t num_graphs() const override;

 private:
  CudaBackend* b_;
};

// SampleRowArgs (backend.h) is passed to the kernels as cuda::SampleRowParams without a copy.
static_assert(sizeof(SampleRowArgs) == sizeof(cuda::SampleRowParams) &&
              offsetof(SampleRowArgs, temperature) == offsetof(cuda::SampleRowParams, temperature) &&
              offsetof(SampleRowArgs, top_k) == offsetof(cuda::SampleRowParams, top_k) &&
              offsetof(SampleRowArgs, top_p) == offsetof(cuda::SampleRowParams, top_p) &&
              offsetof(SampleRowArgs, u) == offsetof(cuda::SampleRowParams, u));

class CudaBackend final : public Backend {
  friend class CudaStepGraphs;

 public:
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const BackendOptions& o) {
    const int device = o.gpu_index;
    const std::string& decode_kernel = o.decode_kernel;
    const std::string& skinny_warps = o.skinny_warps;
    if (o.decode_splits < 0 || o.decode_fuse_min_keys < 0) {
      return absl::InvalidArgumentError(absl::StrCat("decode splits (", o.decode_splits, ") and fuse-min-keys (",
                                                     o.decode_fuse_min_keys, ") must be >= 0 (0: automatic)"));
    }
    auto b = std::unique_ptr<CudaBackend>(new CudaBackend());
    b->device_ = device;
    b->decode_splits_ = o.decode_splits;
    b->decode_fuse_min_keys_ = o.decode_fuse_min_keys;
    b->fuse_rope_kv_ = o.fuse_rope_kv;
    if (decode_kernel == "v4") {
      b->decode_kernel_ = cuda::DecodeKernel::kV4;
    } else if (decode_kernel == "v6") {
      b->decode_kernel_ = cuda::DecodeKernel::kV6;
    } else if (decode_kernel == "v10") {
      b->decode_kernel_ = cuda::DecodeKernel::kV10;
    } else if (decode_kernel == "v8") {
      b->decode_kernel_ = cuda::DecodeKernel::kV8;
    } else if (decode_kernel == "v5" || decode_kernel == "v5w") {
      b->decode_kernel_ = cuda::DecodeKernel::kV5;
      b->decode_early_reads_ = decode_kernel == "v5";
    } else if (decode_kernel != "auto") {
      return absl::InvalidArgumentError(
          absl::StrCat("decode kernel '", decode_kernel, "' is not one of auto, v10, v8, v6, v5, v5w, v4"));
    }
    SQA_GPU_RETURN_IF_ERROR(cudaSetDevice(device));
    b->ctx_ = std::make_shared<Context>();
    b->ctx_->device = device;
    SQA_ASSIGN_OR_RETURN(b->ctx_->stream, CudaStream::Create());
    SQA_ASSIGN_OR_RETURN(b->gemm_, cuda::LtGemm::Create());
    if (o.skinny_max_rows < 0 || o.skinny_max_rows > cuda::kSkinnyMaxRows) {
      return absl::InvalidArgumentError(absl::StrCat("skinny_max_rows ", o.skinny_max_rows, " is not in 0..",
                                                     cuda::kSkinnyMaxRows, " (0: ", cuda::kSkinnyMaxRows, ")"));
    }
    b->gemm_.set_skinny_max_rows(!o.skinny_gemm ? 0 : o.skinny_max_rows > 0 ? o.skinny_max_rows : cuda::kSkinnyMaxRows);
    if (o.skinny_stream != "auto" && o.skinny_stream != "all" && o.skinny_stream != "off") {
      return absl::InvalidArgumentError(
          absl::StrCat("skinny_stream '", o.skinny_stream, "' is not one of auto, all, off"));
    }
    b->gemm_.set_stream_mode(!o.skinny_gemm || o.skinny_stream == "off" ? cuda::SkinnyStream::kOff
                             : o.skinny_stream == "all"                 ? cuda::SkinnyStream::kAll
                                                                        : cuda::SkinnyStream::kAuto);
    if (skinny_warps == "8") {
      b->gemm_.set_skinny_warps(cuda::SkinnyWarps::k8);
    } else if (skinny_warps == "16") {
      b->gemm_.set_skinny_warps(cuda::SkinnyWarps::k16);
    } else if (skinny_warps != "auto") {
      return absl::InvalidArgumentError(absl::StrCat("skinny warps '", skinny_warps, "' is not one of auto, 8, 16"));
    }
    SQA_RETURN_IF_ERROR(b->stager_.Init(b->ctx_));
    // Keep freed activation memory cached in the pool instead of returning it at each sync.
    cudaMemPool_t pool = nullptr;
    SQA_GPU_RETURN_IF_ERROR(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t threshold = std::numeric_limits<uint64_t>::max();
    SQA_GPU_RETURN_IF_ERROR(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    cudaDeviceProp prop{};
    SQA_GPU_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
    b->device_name_ = prop.name;
    return b;
  }

  ~CudaBackend() override {
    cudaSetDevice(device_);
    if (ctx_ && ctx_->stream) cudaStreamSynchronize(ctx_->stream.get());
    if (decode_ws_) cudaFreeAsync(decode_ws_, ctx_->stream.get());
    if (sample_ws_) cudaFreeAsync(sample_ws_, ctx_->stream.get());
  }

  std::string name() const override { return absl::StrCat("cuda:", device_); }
  DType act_dtype() const override { return DType::kBF16; }

  absl::StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) override {
    SQA_RETURN_IF_ERROR(Enter());
    if (capturing_) return absl::FailedPreconditionError("Allocate called during a graph capture");
    void* p = nullptr;
    if (bytes > 0) {
      const cudaError_t e = cudaMallocAsync(&p, bytes, stream());
      if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        return absl::ResourceExhaustedError(
            absl::StrCat("CUDA device ", device_, " (", device_name_, ") has no room for ", bytes, " more bytes"));
      }
      SQA_GPU_RETURN_IF_ERROR(e);
    }
    return std::unique_ptr<DeviceBuffer>(new PoolBuffer(ctx_, p, bytes));
  }

  absl::Status CopyToHost(const TensorView& src, void* dst) override {
    SQA_RETURN_IF_ERROR(Enter());
    if (src.nbytes() == 0) return absl::OkStatus();
    if (dst == nullptr) return absl::InvalidArgumentError("CopyToHost: null destination");
    if (src.space == MemSpace::kHost) {
      SQA_GPU_RETURN_IF_ERROR(cudaStreamSynchronize(stream()));
      std::memcpy(dst, src.data, src.nbytes());
      return absl::OkStatus();
    }
    SQA_GPU_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src.data, src.nbytes(), cudaMemcpyDeviceToHost, stream()));
    SQA_GPU_RETURN_IF_ERROR(cudaStreamSynchronize(stream()));
    return absl::OkStatus();
  }

  absl::Status CopyFromHost(const void* src, const TensorView& dst) override {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_RETURN_IF_ERROR(ExpectDevice(dst, "CopyFromHost", "dst"));
    if (dst.nbytes() == 0) return absl::OkStatus();
    if (src == nullptr) return absl::InvalidArgumentError("CopyFromHost: null source");
    // From pageable memory the call returns once `src` has been read, so the caller may reuse it.
    SQA_GPU_RETURN_IF_ERROR(cudaMemcpyAsync(dst.data, src, dst.nbytes(), cudaMemcpyHostToDevice, stream()));
    return absl::OkStatus();
  }

  absl::Status Synchronize() override {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_GPU_RETURN_IF_ERROR(cudaStreamSynchronize(stream()));
    return absl::OkStatus();
  }

  // Rank-1 weights (norm scales) become f32, everything else bf16.
  absl::StatusOr<BackendWeight> UploadWeight(const TensorView& host) override {
    SQA_RETURN_IF_ERROR(Enter());
    if (host.space != MemSpace::kHost) return absl::InvalidArgumentError("UploadWeight: source must be host memory");
    if (host.dtype != DType::kF32 && host.dtype != DType::kBF16 && host.dtype != DType::kF16) {
      return absl::InvalidArgumentError(
          absl::StrCat("UploadWeight: weight dtype ", DTypeStr(host.dtype), " unsupported (f32, f16, bf16)"));
    }
    const DType target = host.shape.size() == 1 ? DType::kF32 : DType::kBF16;
    const size_t n = static_cast<size_t>(host.numel());
    SQA_ASSIGN_OR_RETURN(DeviceMemory mem, DeviceMemory::Allocate(n * DTypeSize(target)));
    if (n > 0) {
      if (host.dtype == target) {
        SQA_GPU_RETURN_IF_ERROR(cudaMemcpyAsync(mem.get(), host.data, host.nbytes(), cudaMemcpyHostToDevice, stream()));
      } else {
        // Raw upload in chunks through a scratch buffer, converted on the device.
        const size_t src_es = DTypeSize(host.dtype);
        const size_t chunk = std::min(n, (size_t{64} << 20) / src_es);
        SQA_ASSIGN_OR_RETURN(DeviceMemory scratch, DeviceMemory::Allocate(chunk * src_es));
        for (size_t off = 0; off < n; off += chunk) {
          const size_t m = std::min(chunk, n - off);
          SQA_GPU_RETURN_IF_ERROR(cudaMemcpyAsync(scratch.get(), static_cast<const char*>(host.data) + off * src_es,
                                                  m * src_es, cudaMemcpyHostToDevice, stream()));
          SQA_RETURN_IF_ERROR(cuda::LaunchConvert(scratch.get(), host.dtype,
                                                  static_cast<char*>(mem.get()) + off * DTypeSize(target), target, m,
                                                  stream()));
        }
        SQA_GPU_RETURN_IF_ERROR(cudaStreamSynchronize(stream()));
      }
    }
    BackendWeight w;
    w.view.data = mem.get();
    w.view.dtype = target;
    w.view.space = MemSpace::kDevice;
    w.view.shape = host.shape;
    w.storage = std::make_unique<StaticBuffer>(ctx_, std::move(mem));
    return w;
  }

  absl::Status Embed(const TensorView& table, const int32_t* tokens, int64_t n, const TensorView& out) override {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_RETURN_IF_ERROR(ExpectAct(table, "Embed", "table"));
    SQA_RETURN_IF_ERROR(ExpectAct(out, "Embed", "out"));
    if (table.shape.size() != 2) return absl::InvalidArgumentError("Embed: table must be [vocab, d]");
    const int64_t vocab = table.dim(0), d = table.dim(1);
    SQA_RETURN_IF_ERROR(ExpectShape(out, {n, d}, "Embed", "out"));
    if (n == 0) return absl::OkStatus();
    if (tokens == nullptr) return absl::InvalidArgumentError("Embed: null token array");
    for (int64_t i = 0; i < n; ++i) {
      if (tokens[i] < 0 || tokens[i] >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("Embed: token id ", tokens[i], " at index ", i, " is outside the vocabulary [0, ", vocab, ")"));
      }
    }
    const void* dev_tokens = nullptr;
    SQA_RETURN_IF_ERROR(stager_.Stage(Staged::kTokens, {{tokens, sizeof(int32_t) * n, &dev_tokens}}));
    return cuda::LaunchEmbed(table.data, table.dtype, static_cast<const int32_t*>(dev_tokens), n, d, out.data,
                             out.dtype, stream());
  }

  absl::Status RmsNorm(const TensorView& x, const TensorView& weight, float eps, const TensorView& out) override {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_RETURN_IF_ERROR(ExpectAct(x, "RmsNorm", "x"));
    SQA_RETURN_IF_ERROR(ExpectAct(weight, "RmsNorm", "weight"));
    SQA_RETURN_IF_ERROR(ExpectAct(out, "RmsNorm", "out"));
    if (x.shape.empty() || weight.shape.size() != 1 || x.dim(-1) != weight.dim(0)) {
      return absl::InvalidArgumentError(absl::StrCat("RmsNorm: x ", ShapeString(x.shape), " and weight ",
                                                     ShapeString(weight.shape), " do not match"));
    }
    SQA_RETURN_IF_ERROR(ExpectShape(out, x.shape, "RmsNorm", "out"));
    const int64_t d = weight.dim(0);
    if (d == 0) return absl::OkStatus();
    return cuda::LaunchRmsNorm(x.data, x.dtype, weight.data, weight.dtype, x.numel() / d, d, eps, out.data, out.dtype,
                               stream());
  }

  absl::Status Linear(const TensorView& x, const TensorView& w, const TensorView& out) override {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_RETURN_IF_ERROR(ExpectAct(x, "Linear", "x"));
    SQA_RETURN_IF_ERROR(ExpectDevice(w, "Linear", "w"));
    SQA_RETURN_IF_ERROR(ExpectAct(out, "Linear", "out"));
    SQA_RETURN_IF_ERROR(ExpectDType(w, DType::kBF16, "Linear", "w"));
    if (w.shape.size() != 2 || x.shape.empty() || x.dim(-1) != w.dim(1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Linear: x ", ShapeString(x.shape), " does not match w ", ShapeString(w.shape)));
    }
    const int64_t in = w.dim(1), of = w.dim(0);
    const int64_t n = in ? x.numel() / in : 0;
    SQA_RETURN_IF_ERROR(ExpectShape(out, {n, of}, "Linear", "out"));
    const void* xin = x.data;
    std::unique_ptr<DeviceBuffer> tmp;
    if (x.dtype != DType::kBF16) {  // f32 input: round to bf16 first (the GEMM is bf16 x bf16)
      SQA_ASSIGN_OR_RETURN(tmp, Allocate(static_cast<size_t>(n * in) * 2));
      SQA_RETURN_IF_ERROR(cuda::LaunchConvert(x.data, x.dtype, tmp->data(), DType::kBF16, n * in, stream()));
      xin = tmp->data();
    }
    return gemm_.Linear(xin, w.data, out.data, out.dtype, n, in, of, stream());
  }

  // One skinny launch for the q, k, v projections of a decode step: the narrow form up to 8 rows,
  // the stream form where LtGemm::UseStream for every weight alone, else the wide form up to
  // kSkinnyMaxRows; otherwise one Linear each.
  absl::Status LinearMany(const TensorView& x, absl::Span<const TensorView> ws,
                          absl::Span<const TensorView> outs) override {
    SQA_RETURN_IF_ERROR(Enter());
    if (ws.size() != outs.size() || ws.empty() || ws.size() > static_cast<size_t>(cuda::kSkinnyMaxSegments)) {
      return Backend::LinearMany(x, ws, outs);
    }
    std::vector<cuda::SkinnyOutput> so;
    if (StreamOutputs(x, ws, outs, /*per_weight=*/true, &so)) {
      const int64_t in = ws[0].dim(1);
      return cuda::LaunchSkinnyStream(x.data, x.numel() / in, in, so, DType::kBF16, stream(), gemm_.skinny_workspace());
    }
    if (!SkinnyInput(x, ws[0])) return Backend::LinearMany(x, ws, outs);
    const int64_t in = ws[0].dim(1), n = x.numel() / in;
    so.clear();
    for (size_t i = 0; i < ws.size(); ++i) {
      const TensorView& w = ws[i];
      const TensorView& o = outs[i];
      if (!SkinnyInput(x, w) || o.space != MemSpace::kDevice || o.dtype != DType::kBF16 || o.numel() != n * w.dim(0) ||
          !cuda::SkinnyGemmApplies(x.data, w.data, o.data, DType::kBF16, n, in, w.dim(0))) {
        return Backend::LinearMany(x, ws, outs);
      }
      so.push_back({w.data, o.data, w.dim(0)});
    }
    return cuda::LaunchSkinnyGemmMany(x.data, n, in, so, DType::kBF16, stream(), gemm_.skinny_warps(),
                                      gemm_.skinny_workspace());
  }

  // Gate, up and SwiGLU as one skinny launch for up to kSkinnyNarrowMaxRows rows; gate and up as
  // one launch of the stream form, then the SwiGLU kernel, where LtGemm::UseStream; otherwise the
  // three ops.
  absl::Status LinearSwiGlu(const TensorView& x, const TensorView& w_gate, const TensorView& w_up,
                            const TensorView& gate, const TensorView& up, const TensorView& out) override {
    SQA_RETURN_IF_ERROR(Enter());
    if (SkinnyInput(x, w_gate) && SkinnyInput(x, w_up) && w_gate.shape == w_up.shape &&
        out.space == MemSpace::kDevice && out.dtype == DType::kBF16) {
      const int64_t in = w_gate.dim(1), n = x.numel() / in, inter = w_gate.dim(0);
      if (out.numel() == n * inter && n <= cuda::kSkinnyNarrowMaxRows &&
          cuda::SkinnyGemmApplies(x.data, w_gate.data, out.data, DType::kBF16, n, in, inter) &&
          reinterpret_cast<uintptr_t>(w_up.data) % 16 == 0) {
        return cuda::LaunchSkinnySwiGlu(x.data, w_gate.data, w_up.data, out.data, n, in, inter, stream(),
                                        gemm_.skinny_warps());
      }
    }
    const TensorView gw[2] = {w_gate, w_up}, go[2] = {gate, up};
    std::vector<cuda::SkinnyOutput> so;
    if (w_gate.shape == w_up.shape && out.space == MemSpace::kDevice && out.dtype == DType::kBF16 &&
        out.numel() == gate.numel() && StreamOutputs(x, gw, go, /*per_weight=*/false, &so)) {
      const int64_t in = w_gate.dim(1);
      SQA_RETURN_IF_ERROR(
          cuda::LaunchSkinnyStream(x.data, x.numel() / in, in, so, DType::kBF16, stream(), gemm_.skinny_workspace()));
      return cuda::LaunchSwiGlu(gate.data, up.data, out.data, DType::kBF16, out.numel(), stream());
    }
    return Backend::LinearSwiGlu(x, w_gate, w_up, gate, up, out);
  }

  absl::Status AddRmsNorm(const TensorView& x, const TensorView& y, const TensorView& weight, float eps,
                          const TensorView& out) override {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_RETURN_IF_ERROR(ExpectAct(x, "AddRmsNorm", "x"));
    SQA_RETURN_IF_ERROR(ExpectAct(y, "AddRmsNorm", "y"));
    SQA_RETURN_IF_ERROR(ExpectAct(weight, "AddRmsNorm", "weight"));
    SQA_RETURN_IF_ERROR(ExpectAct(out, "AddRmsNorm", "out"));
    if (x.shape.empty() || weight.shape.size() != 1 || x.dim(-1) != weight.dim(0) || y.numel() != x.numel()) {
      return absl::InvalidArgumentError(absl::StrCat("AddRmsNorm: x ", ShapeString(x.shape), ", y ",
                                                     ShapeString(y.shape), " and weight ", ShapeString(weight.shape),
                                                     " do not match"));
    }
    SQA_RETURN_IF_ERROR(ExpectShape(out, x.shape, "AddRmsNorm", "out"));
    const int64_t d = weight.dim(0);
    bool done = false;
    if (d > 0 && x.dtype == y.dtype && x.dtype == out.dtype) {
      SQA_RETURN_IF_ERROR(cuda::LaunchAddRmsNorm(x.data, y.data, x.dtype, weight.data, weight.dtype, x.numel() / d, d,
                                                 eps, out.data, stream(), &done));
    }
    return done ? absl::OkStatus() : Backend::AddRmsNorm(x, y, weight, eps, out);
  }

  absl::Status RopeQK(const TensorView& q, const TensorView& k, const int32_t* positions,
                      const RopeArgs& rope) override {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_RETURN_IF_ERROR(ExpectAct(q, "Rope", "q"));
    SQA_RETURN_IF_ERROR(ExpectAct(k, "Rope", "k"));
    if (q.shape.size() != 3 || k.shape.size() != 3 || q.dim(0) != k.dim(0) || q.dim(2) != k.dim(2) ||
        q.dtype != k.dtype) {
      return Backend::RopeQK(q, k, positions, rope);
    }
    const int64_t n = q.dim(0);
    if (n == 0) return absl::OkStatus();
    SQA_ASSIGN_OR_RETURN(const int32_t* dev_pos, StagePositions(positions, n));
    bool done = false;
    SQA_RETURN_IF_ERROR(cuda::LaunchRopeQK(q.data, q.dim(1), k.data, k.dim(1), q.dtype, n, q.dim(2), dev_pos,
                                           rope.theta, rope.position_scale, stream(), &done));
    return done ? absl::OkStatus() : Backend::RopeQK(q, k, positions, rope);
  }

  absl::Status AddInPlace(const TensorView& x, const TensorView& y) override {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_RETURN_IF_ERROR(ExpectAct(x, "AddInPlace", "x"));
    SQA_RETURN_IF_ERROR(ExpectAct(y, "AddInPlace", "y"));
    if (x.numel() != y.numel()) {
      return absl::InvalidArgumentError(
          absl::StrCat("AddInPlace: x ", ShapeString(x.shape), " and y ", ShapeString(y.shape), " differ in size"));
    }
    return cuda::LaunchAddInPlace(x.data, x.dtype, y.data, y.dtype, x.numel(), stream());
  }

  absl::Status Rope(const TensorView& x, const int32_t* positions, const RopeArgs& rope) override {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_RETURN_IF_ERROR(ExpectAct(x, "Rope", "x"));
    if (x.shape.size() != 3) return absl::InvalidArgumentError("Rope: x must be [n, heads, head_dim]");
    const int64_t n = x.dim(0);
    if (n == 0) return absl::OkStatus();
    SQA_ASSIGN_OR_RETURN(const int32_t* dev_pos, StagePositions(positions, n));
    return cuda::LaunchRope(x.data, x.dtype, n, x.dim(1), x.dim(2), dev_pos, rope.theta, rope.position_scale,
                            stream());
  }

  absl::Status SwiGlu(const TensorView& gate, const TensorView& up, const TensorView& out) override {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_RETURN_IF_ERROR(ExpectAct(gate, "SwiGlu", "gate"));
    SQA_RETURN_IF_ERROR(ExpectAct(up, "SwiGlu", "up"));
    SQA_RETURN_IF_ERROR(ExpectAct(out, "SwiGlu", "out"));
    if (gate.shape != up.shape || gate.shape != out.shape || gate.dtype != up.dtype || gate.dtype != out.dtype) {
      return absl::InvalidArgumentError(absl::StrCat("SwiGlu: gate ", ShapeString(gate.shape), ", up ",
                                                     ShapeString(up.shape), " and out ", ShapeString(out.shape),
                                                     " must have one shape and dtype"));
    }
    return cuda::LaunchSwiGlu(gate.data, up.data, out.data, gate.dtype, gate.numel(), stream());
  }

  absl::Status GatherRows(const TensorView& x, const int64_t* rows, int64_t m, const TensorView& out) override {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_RETURN_IF_ERROR(ExpectDevice(x, "GatherRows", "x"));
    SQA_RETURN_IF_ERROR(ExpectDevice(out, "GatherRows", "out"));
    if (x.shape.empty() || out.shape.empty() || out.dim(0) != m || x.dtype != out.dtype ||
        (x.dim(0) ? x.numel() / x.dim(0) : 0) != (m ? out.numel() / m : 0)) {
      return absl::InvalidArgumentError(absl::StrCat("GatherRows: x ", ShapeString(x.shape), " and out ",
                                                     ShapeString(out.shape), " do not match ", m, " rows"));
    }
    if (m == 0) return absl::OkStatus();
    if (rows == nullptr) return absl::InvalidArgumentError("GatherRows: null rows");
    for (int64_t i = 0; i < m; ++i) {
      if (rows[i] < 0 || rows[i] >= x.dim(0)) {
        return absl::InvalidArgumentError(absl::StrCat("GatherRows: row ", rows[i], " outside [0, ", x.dim(0), ")"));
      }
    }
    const void* dev_rows = nullptr;
    SQA_RETURN_IF_ERROR(stager_.Stage(Staged::kRows, {{rows, sizeof(int64_t) * m, &dev_rows}}));
    const int64_t row_bytes = static_cast<int64_t>(out.nbytes()) / m;
    return cuda::LaunchGatherRows(x.data, static_cast<const int64_t*>(dev_rows), m, row_bytes, out.data, stream());
  }

  absl::StatusOr<std::unique_ptr<KvCacheStorage>> CreateKvCache(const KvCacheShape& shape) override {
    SQA_RETURN_IF_ERROR(Enter());
    if (shape.num_layers <= 0 || shape.num_blocks <= 0 || shape.block_size <= 0 || shape.num_kv_heads <= 0 ||
        shape.head_dim <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("CreateKvCache: every dimension must be positive (layers ",
                                                     shape.num_layers, ", blocks ", shape.num_blocks, ", block size ",
                                                     shape.block_size, ", kv heads ", shape.num_kv_heads,
                                                     ", head dim ", shape.head_dim, ")"));
    }
    const size_t bytes = static_cast<size_t>(shape.num_layers * shape.num_blocks * shape.block_elems()) * 2;
    auto alloc = [&](DeviceMemory* m) -> absl::Status {
      auto r = DeviceMemory::Allocate(bytes);
      if (!r.ok()) {
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        return absl::ResourceExhaustedError(absl::StrCat("KV cache needs 2 x ", bytes, " bytes on ", name(), "; ",
                                                         free_b, " bytes are free (", r.status().message(), ")"));
      }
      *m = std::move(r).value();
      return absl::OkStatus();
    };
    DeviceMemory k, v;
    SQA_RETURN_IF_ERROR(alloc(&k));
    SQA_RETURN_IF_ERROR(alloc(&v));
    return std::unique_ptr<KvCacheStorage>(new CudaKvCache(ctx_, shape, std::move(k), std::move(v)));
  }

  absl::Status WriteKv(KvCacheStorage& cache, int64_t layer, const TensorView& k, const TensorView& v,
                       const int64_t* slots) override {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_ASSIGN_OR_RETURN(const KvWrite w, PrepareWriteKv(cache, layer, k, v, slots));
    if (w.n == 0) return absl::OkStatus();
    const KvCacheShape& s = w.kc->shape();
    return cuda::LaunchWriteKv(k.data, v.data, k.dtype, w.dev_slots, w.n, s.num_kv_heads, s.head_dim, s.block_size,
                               w.kc->k(layer), w.kc->v(layer), stream());
  }

  absl::Status RopeQKWriteKv(const TensorView& q, const TensorView& k, const TensorView& v, const int32_t* positions,
                             const RopeArgs& rope, KvCacheStorage& cache, int64_t layer,
                             const int64_t* slots) override {
    SQA_RETURN_IF_ERROR(Enter());
    if (!fuse_rope_kv_ || q.shape.size() != 3 || k.shape.size() != 3 || q.dim(0) != k.dim(0) ||
        q.dim(2) != k.dim(2) || q.dtype != DType::kBF16 || k.dtype != DType::kBF16) {
      return Backend::RopeQKWriteKv(q, k, v, positions, rope, cache, layer, slots);
    }
    SQA_RETURN_IF_ERROR(ExpectAct(q, "Rope", "q"));
    SQA_ASSIGN_OR_RETURN(const KvWrite w, PrepareWriteKv(cache, layer, k, v, slots));
    if (w.n == 0) return absl::OkStatus();
    SQA_ASSIGN_OR_RETURN(const int32_t* dev_pos, StagePositions(positions, w.n));
    cuda::RopeKvStore store;
    store.v = v.data;
    store.slots = w.dev_slots;
    store.k_cache = w.kc->k(layer);
    store.v_cache = w.kc->v(layer);
    bool done = false;
    SQA_RETURN_IF_ERROR(cuda::LaunchRopeQK(q.data, q.dim(1), k.data, k.dim(1), q.dtype, w.n, q.dim(2), dev_pos,
                                           rope.theta, rope.position_scale, stream(), &done, &store));
    return done ? absl::OkStatus() : Backend::RopeQKWriteKv(q, k, v, positions, rope, cache, layer, slots);
  }

  absl::Status AttentionPrefill(const PrefillAttentionArgs& a) override {
    SQA_ASSIGN_OR_RETURN(const CudaKvCache* kc, AttentionCache(a.cache, a.layer, a.q, a.out, "AttentionPrefill"));
    const KvCacheShape& s = kc->shape();
    if (a.q.shape.size() != 3 || a.q.dim(2) != s.head_dim) {
      return absl::InvalidArgumentError(absl::StrCat("AttentionPrefill: q ", ShapeString(a.q.shape),
                                                     " must be [n, Hq, ", s.head_dim, "]"));
    }
    const int64_t n = a.q.dim(0), hq = a.q.dim(1), hkv = s.num_kv_heads;
    SQA_RETURN_IF_ERROR(CheckHeads(hq, hkv, "AttentionPrefill"));
    const int64_t ha = std::max(hq, hkv);
    SQA_RETURN_IF_ERROR(ExpectShape(a.out, {n, ha, s.head_dim}, "AttentionPrefill", "out"));
    if (n == 0) return absl::OkStatus();
    if (a.q_pos0 < 0 || a.kv.kv_len < 0 || (a.causal && a.q_pos0 + n > a.kv.kv_len)) {
      return absl::InvalidArgumentError(absl::StrCat("AttentionPrefill: queries at [", a.q_pos0, ", ", a.q_pos0 + n,
                                                     ") do not fit keys [0, ", a.kv.kv_len, ")"));
    }
    const int64_t nblocks = (a.kv.kv_len + s.block_size - 1) / s.block_size;
    SQA_RETURN_IF_ERROR(CheckBlockTable(a.kv.block_table, nblocks, s.num_blocks, "AttentionPrefill"));
    const void* dev_table = nullptr;
    SQA_RETURN_IF_ERROR(stager_.Stage(Staged::kPrefillTable, {{a.kv.block_table, sizeof(int32_t) * nblocks, &dev_table}}));
    cuda::PrefillParams p;
    p.q = a.q.data;
    p.n = n;
    p.q_pos0 = a.q_pos0;
    p.kv.k = kc->k(a.layer);
    p.kv.v = kc->v(a.layer);
    p.kv.block_table = static_cast<const int32_t*>(dev_table);
    p.kv.block_size = static_cast<int>(s.block_size);
    p.kv.num_blocks = s.num_blocks;
    p.kv_len = a.kv.kv_len;
    p.num_q_heads = static_cast<int>(hq);
    p.num_kv_heads = static_cast<int>(hkv);
    p.head_dim = static_cast<int>(s.head_dim);
    p.causal = a.causal;
    p.scale = a.scale;
    p.out = a.out.data;
    p.lse = a.lse;
    return cuda::LaunchAttentionPrefill(p, stream());
  }

  absl::Status AttentionDecode(const DecodeAttentionArgs& a) override {
    SQA_ASSIGN_OR_RETURN(const CudaKvCache* kc, AttentionCache(a.cache, a.layer, a.q, a.out, "AttentionDecode"));
    const KvCacheShape& s = kc->shape();
    if (a.kv_lens != nullptr) return AttentionDecodePadded(a, kc);
    const int64_t batch = static_cast<int64_t>(a.seqs.size());
    if (a.q.shape.size() != 3 || a.q.dim(0) != batch || a.q.dim(2) != s.head_dim) {
      return absl::InvalidArgumentError(absl::StrCat("AttentionDecode: q ", ShapeString(a.q.shape), " must be [",
                                                     batch, ", Hq, ", s.head_dim, "]"));
    }
    const int64_t hq = a.q.dim(1), hkv = s.num_kv_heads;
    SQA_RETURN_IF_ERROR(CheckHeads(hq, hkv, "AttentionDecode"));
    const int64_t ha = std::max(hq, hkv);
    SQA_RETURN_IF_ERROR(ExpectShape(a.out, {batch, ha, s.head_dim}, "AttentionDecode", "out"));
    if (batch == 0) return absl::OkStatus();
    int64_t max_len = 0, stride = 1;
    for (const KvSequenceRef& r : a.seqs) {
      if (r.kv_len < 0 || r.kv_len > std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(absl::StrCat("AttentionDecode: kv_len ", r.kv_len, " out of range"));
      }
      max_len = std::max(max_len, r.kv_len);
      stride = std::max(stride, (r.kv_len + s.block_size - 1) / s.block_size);
    }
    tables_.assign(static_cast<size_t>(batch * stride), 0);
    lens_.resize(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) {
      const KvSequenceRef& r = a.seqs[b];
      const int64_t nb = (r.kv_len + s.block_size - 1) / s.block_size;
      SQA_RETURN_IF_ERROR(CheckBlockTable(r.block_table, nb, s.num_blocks, "AttentionDecode"));
      std::copy(r.block_table, r.block_table + nb, tables_.begin() + b * stride);
      lens_[b] = static_cast<int32_t>(r.kv_len);
    }
    const void* dev_tables = nullptr;
    const void* dev_lens = nullptr;
    SQA_RETURN_IF_ERROR(stager_.Stage(Staged::kDecodeTables, {{tables_.data(), sizeof(int32_t) * tables_.size(), &dev_tables},
                                       {lens_.data(), sizeof(int32_t) * lens_.size(), &dev_lens}}));
    cuda::DecodeParams p = DecodeParamsFor(a, kc, batch, hq, dev_tables, stride, dev_lens, max_len);
    const size_t ws = cuda::DecodeWorkspaceBytes(static_cast<int>(batch), static_cast<int>(hq), static_cast<int>(hkv),
                                                 static_cast<int>(s.head_dim), cuda::DecodePlanKvLen(p), decode_splits_,
                                                 decode_kernel_);
    SQA_RETURN_IF_ERROR(GrowPoolWorkspace(&decode_ws_, &decode_ws_bytes_, ws));
    p.workspace = decode_ws_;
    p.workspace_bytes = decode_ws_bytes_;
    return cuda::LaunchAttentionDecode(p, stream());
  }

  // The checks every attention op starts with: the backend is usable, the cache is this backend's
  // and has `layer`, and q and out are bf16 tensors on the device.
  absl::StatusOr<const CudaKvCache*> AttentionCache(const KvCacheStorage* cache, int64_t layer, const TensorView& q,
                                                    const TensorView& out, const char* op) {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_ASSIGN_OR_RETURN(const CudaKvCache* kc, Cache(cache, op));
    SQA_RETURN_IF_ERROR(CheckLayer(kc->shape(), layer, op));
    SQA_RETURN_IF_ERROR(ExpectDevice(q, op, "q"));
    SQA_RETURN_IF_ERROR(ExpectDevice(out, op, "out"));
    SQA_RETURN_IF_ERROR(ExpectDType(q, DType::kBF16, op, "q"));
    SQA_RETURN_IF_ERROR(ExpectDType(out, DType::kBF16, op, "out"));
    return kc;
  }

  // Decode parameters of both decode forms, less the workspace: tables and lengths already on the
  // device, `stride` entries per row.
  cuda::DecodeParams DecodeParamsFor(const DecodeAttentionArgs& a, const CudaKvCache* kc, int64_t batch,
                                            int64_t hq, const void* dev_tables, int64_t stride, const void* dev_lens,
                                            int64_t max_len) {
    const KvCacheShape& s = kc->shape();
    cuda::DecodeParams p;
    p.q = a.q.data;
    p.batch = static_cast<int>(batch);
    p.k_cache = kc->k(a.layer);
    p.v_cache = kc->v(a.layer);
    p.block_size = static_cast<int>(s.block_size);
    p.block_tables = static_cast<const int32_t*>(dev_tables);
    p.block_table_stride = stride;
    p.kv_lens = static_cast<const int32_t*>(dev_lens);
    p.max_kv_len = max_len;
    p.plan_kv_len = a.plan_kv_len;
    p.num_q_heads = static_cast<int>(hq);
    p.num_kv_heads = static_cast<int>(s.num_kv_heads);
    p.head_dim = static_cast<int>(s.head_dim);
    p.scale = a.scale;
    p.out = a.out.data;
    p.lse = a.lse;
    p.kernel = decode_kernel_;
    p.num_splits = decode_splits_;
    p.fuse_min_split_keys = decode_fuse_min_keys_;
    p.fresh_kv_tokens = decode_early_reads_ ? static_cast<int>(std::clamp<int64_t>(a.fresh_kv_tokens, -1,
                                                                                   std::numeric_limits<int>::max()))
                                            : -1;
    return p;
  }

  absl::Status MergeAttention(absl::Span<const TensorView> outs, absl::Span<const float* const> lses,
                              const TensorView& out, float* lse_out) override {
    SQA_RETURN_IF_ERROR(Enter());
    if (outs.empty() || outs.size() != lses.size()) {
      return absl::InvalidArgumentError(absl::StrCat("MergeAttention: ", outs.size(), " outputs and ", lses.size(),
                                                     " LSE arrays; need the same number, at least one"));
    }
    SQA_RETURN_IF_ERROR(ExpectDevice(out, "MergeAttention", "out"));
    SQA_RETURN_IF_ERROR(ExpectDType(out, DType::kBF16, "MergeAttention", "out"));
    if (out.shape.size() != 3) return absl::InvalidArgumentError("MergeAttention: out must be [n, heads, head_dim]");
    const DType part = outs[0].dtype;
    for (size_t i = 0; i < outs.size(); ++i) {
      SQA_RETURN_IF_ERROR(ExpectDevice(outs[i], "MergeAttention", "partial output"));
      SQA_RETURN_IF_ERROR(ExpectShape(outs[i], out.shape, "MergeAttention", "partial output"));
      if (outs[i].dtype != part || !IsAct(part)) {
        return absl::InvalidArgumentError("MergeAttention: partial outputs must all be bf16 or all f32");
      }
      if (lses[i] == nullptr) return absl::InvalidArgumentError("MergeAttention: null partial LSE");
    }
    const int64_t n = out.dim(0);
    const int heads = static_cast<int>(out.dim(1)), dh = static_cast<int>(out.dim(2));
    if (n == 0) return absl::OkStatus();
    // More parts than one launch takes: merge groups into f32 temporaries first.
    std::vector<const void*> ptrs;
    std::vector<const float*> lse_ptrs(lses.begin(), lses.end());
    for (const TensorView& t : outs) ptrs.push_back(t.data);
    DType cur = part;
    std::vector<std::unique_ptr<DeviceBuffer>> temps;
    while (ptrs.size() > static_cast<size_t>(cuda::kMaxMergeParts)) {
      std::vector<const void*> next;
      std::vector<const float*> next_lse;
      for (size_t g = 0; g < ptrs.size(); g += cuda::kMaxMergeParts) {
        const size_t m = std::min(ptrs.size() - g, static_cast<size_t>(cuda::kMaxMergeParts));
        SQA_ASSIGN_OR_RETURN(auto o, Allocate(out.nbytes()));
        SQA_ASSIGN_OR_RETURN(auto l, Allocate(sizeof(float) * n * heads));
        SQA_RETURN_IF_ERROR(Merge(ptrs.data() + g, lse_ptrs.data() + g, static_cast<int>(m), cur, n, heads, dh,
                                  o->data(), static_cast<float*>(l->data())));
        next.push_back(o->data());
        next_lse.push_back(static_cast<float*>(l->data()));
        temps.push_back(std::move(o));
        temps.push_back(std::move(l));
      }
      ptrs = std::move(next);
      lse_ptrs = std::move(next_lse);
      cur = DType::kBF16;
    }
    return Merge(ptrs.data(), lse_ptrs.data(), static_cast<int>(ptrs.size()), cur, n, heads, dh, out.data, lse_out);
  }

  bool has_device_sampler() const override { return true; }

  absl::Status SampleTokens(const TensorView& logits, const SampleRowArgs* rows, const TensorView& tokens,
                            const TensorView& logprobs) override {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_RETURN_IF_ERROR(ExpectDevice(logits, "SampleTokens", "logits"));
    SQA_RETURN_IF_ERROR(ExpectDType(logits, DType::kF32, "SampleTokens", "logits"));
    if (logits.shape.size() != 2) return absl::InvalidArgumentError("SampleTokens: logits must be [rows, vocab]");
    const int64_t n = logits.dim(0), vocab = logits.dim(1);
    SQA_RETURN_IF_ERROR(ExpectDevice(tokens, "SampleTokens", "tokens"));
    SQA_RETURN_IF_ERROR(ExpectDevice(logprobs, "SampleTokens", "logprobs"));
    SQA_RETURN_IF_ERROR(ExpectDType(tokens, DType::kI32, "SampleTokens", "tokens"));
    SQA_RETURN_IF_ERROR(ExpectDType(logprobs, DType::kF32, "SampleTokens", "logprobs"));
    SQA_RETURN_IF_ERROR(ExpectShape(tokens, {n}, "SampleTokens", "tokens"));
    SQA_RETURN_IF_ERROR(ExpectShape(logprobs, {n}, "SampleTokens", "logprobs"));
    if (n == 0) return absl::OkStatus();
    if (vocab <= 0) return absl::InvalidArgumentError("SampleTokens: empty vocabulary");
    if (rows == nullptr) return absl::InvalidArgumentError("SampleTokens: null rows");
    bool any_random = false;
    for (int64_t i = 0; i < n; ++i) {
      const SampleRowArgs& r = rows[i];
      if (!std::isfinite(r.temperature) || r.temperature < 0 || r.top_k < 0 || !(r.top_p > 0.f && r.top_p <= 1.f) ||
          !(r.u >= 0.0 && r.u < 1.0)) {
        return absl::InvalidArgumentError(absl::StrCat("SampleTokens: invalid sampling arguments for row ", i));
      }
      any_random = any_random || r.temperature > 0.f;
    }
    const void* dev_rows = nullptr;
    bool in_block = false;
    SQA_RETURN_IF_ERROR(stager_.Stage(
        Staged::kSampleParams, {{rows, sizeof(SampleRowArgs) * static_cast<size_t>(n), &dev_rows}}, &in_block));
    const size_t ws = cuda::SampleWorkspaceBytes(static_cast<int>(n), vocab);
    void* wsp = nullptr;
    size_t ws_bytes = 0;
    if (in_block) {
      SQA_RETURN_IF_ERROR(EnsureStepWorkspace(step_sample_ws_, ws));
      wsp = step_sample_ws_.get();
      ws_bytes = step_sample_ws_.size();
    } else {
      SQA_RETURN_IF_ERROR(GrowPoolWorkspace(&sample_ws_, &sample_ws_bytes_, ws));
      wsp = sample_ws_;
      ws_bytes = sample_ws_bytes_;
    }
    return cuda::LaunchSample(logits.as<float>(), static_cast<int>(n), vocab,
                              static_cast<const cuda::SampleRowParams*>(dev_rows), any_random, wsp, ws_bytes,
                              tokens.as<int32_t>(), logprobs.as<float>(), stream());
  }

  StepGraphs* step_graphs() override { return &step_graphs_; }

  absl::StatusOr<std::vector<SampledToken>> Sample(const TensorView& logits, absl::Span<const SamplingParams> params,
                                                   absl::Span<const double> uniforms) {
    SQA_RETURN_IF_ERROR(Enter());
    SQA_RETURN_IF_ERROR(ExpectDevice(logits, "Sample", "logits"));
    SQA_RETURN_IF_ERROR(ExpectDType(logits, DType::kF32, "Sample", "logits"));
    if (logits.shape.size() != 2) return absl::InvalidArgumentError("Sample: logits must be [rows, vocab]");
    const int64_t rows = logits.dim(0), vocab = logits.dim(1);
    if (static_cast<int64_t>(params.size()) != rows || static_cast<int64_t>(uniforms.size()) != rows) {
      return absl::InvalidArgumentError(absl::StrCat("Sample: ", rows, " logit rows but ", params.size(),
                                                     " params and ", uniforms.size(), " uniform draws"));
    }
    if (rows == 0) return std::vector<SampledToken>{};
    if (vocab <= 0) return absl::InvalidArgumentError("Sample: empty vocabulary");
    std::vector<cuda::SampleRowParams> rp(static_cast<size_t>(rows));
    bool any_random = false;
    for (int64_t i = 0; i < rows; ++i) {
      const SamplingParams& p = params[i];
      if (!std::isfinite(p.temperature) || p.temperature < 0 || p.top_k < 0 || !(p.top_p > 0.f && p.top_p <= 1.f) ||
          !(uniforms[i] >= 0.0 && uniforms[i] < 1.0)) {
        return absl::InvalidArgumentError(absl::StrCat("Sample: invalid sampling params or draw for row ", i));
      }
      rp[i] = {p.temperature, p.top_k, p.top_p, uniforms[i]};
      any_random = any_random || p.temperature > 0.f;
    }
    const void* dev_params = nullptr;
    SQA_RETURN_IF_ERROR(
        stager_.Stage(Staged::kSampleParams, {{rp.data(), sizeof(cuda::SampleRowParams) * rp.size(), &dev_params}}));
    const size_t ws = cuda::SampleWorkspaceBytes(static_cast<int>(rows), vocab) + 256 + 8 * static_cast<size_t>(rows);
    if (ws > sample_ws_bytes_) {
      if (sample_ws_) SQA_GPU_RETURN_IF_ERROR(cudaFreeAsync(sample_ws_, stream()));
      sample_ws_ = nullptr;
      sample_ws_bytes_ = 0;
      SQA_GPU_RETURN_IF_ERROR(cudaMallocAsync(&sample_ws_, ws, stream()));
      sample_ws_bytes_ = ws;
    }
    // Outputs at the start of the workspace, the kernels' scratch after them.
    auto* tokens = static_cast<int32_t*>(sample_ws_);
    auto* logprobs = reinterpret_cast<float*>(static_cast<char*>(sample_ws_) + 4 * static_cast<size_t>(rows));
    const size_t out_bytes = (8 * static_cast<size_t>(rows) + 255) & ~size_t{255};
    SQA_RETURN_IF_ERROR(cuda::LaunchSample(logits.as<float>(), static_cast<int>(rows), vocab,
                                           static_cast<const cuda::SampleRowParams*>(dev_params), any_random,
                                           static_cast<char*>(sample_ws_) + out_bytes, sample_ws_bytes_ - out_bytes,
                                           tokens, logprobs, stream()));
    std::vector<int32_t> tok(static_cast<size_t>(rows));
    std::vector<float> lp(static_cast<size_t>(rows));
    SQA_GPU_RETURN_IF_ERROR(cudaMemcpyAsync(tok.data(), tokens, 4 * rows, cudaMemcpyDeviceToHost, stream()));
    SQA_GPU_RETURN_IF_ERROR(cudaMemcpyAsync(lp.data(), logprobs, 4 * rows, cudaMemcpyDeviceToHost, stream()));
    SQA_GPU_RETURN_IF_ERROR(cudaStreamSynchronize(stream()));
    std::vector<SampledToken> out(static_cast<size_t>(rows));
    for (int64_t i = 0; i < rows; ++i) out[i] = {tok[i], lp[i]};
    return out;
  }

 private:
  CudaBackend() = default;

  // Decode attention over padded host arrays (DecodeAttentionArgs' padded form). Arrays inside the
  // step input block use the step workspace, which never moves during a capture.
  absl::Status AttentionDecodePadded(const DecodeAttentionArgs& a, const CudaKvCache* kc) {
    const KvCacheShape& s = kc->shape();
    if (a.q.shape.size() != 3 || a.q.dim(2) != s.head_dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("AttentionDecode: q ", ShapeString(a.q.shape), " must be [B, Hq, ", s.head_dim, "]"));
    }
    const int64_t batch = a.q.dim(0);
    const int64_t hq = a.q.dim(1), hkv = s.num_kv_heads;
    SQA_RETURN_IF_ERROR(CheckHeads(hq, hkv, "AttentionDecode"));
    const int64_t ha = std::max(hq, hkv);
    SQA_RETURN_IF_ERROR(ExpectShape(a.out, {batch, ha, s.head_dim}, "AttentionDecode", "out"));
    if (batch == 0) return absl::OkStatus();
    if (a.block_tables == nullptr || a.table_stride <= 0 || a.max_kv_len < 0 ||
        a.max_kv_len > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError("AttentionDecode: padded form needs block_tables, table_stride > 0 and a "
                                        "max_kv_len in [0, 2^31)");
    }
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t len = a.kv_lens[b];
      const int64_t nb = (len + s.block_size - 1) / s.block_size;
      if (len < 0 || len > a.max_kv_len || nb > a.table_stride) {
        return absl::InvalidArgumentError(absl::StrCat("AttentionDecode: kv_len ", len, " of row ", b,
                                                       " outside [0, ", a.max_kv_len, "] or beyond the table stride ",
                                                       a.table_stride));
      }
      SQA_RETURN_IF_ERROR(CheckBlockTable(a.block_tables + b * a.table_stride, nb, s.num_blocks, "AttentionDecode"));
    }
    const void* dev_tables = nullptr;
    const void* dev_lens = nullptr;
    bool in_block = false;
    SQA_RETURN_IF_ERROR(stager_.Stage(
        Staged::kDecodeTables,
        {{a.block_tables, sizeof(int32_t) * static_cast<size_t>(batch * a.table_stride), &dev_tables},
         {a.kv_lens, sizeof(int32_t) * static_cast<size_t>(batch), &dev_lens}},
        &in_block));
    cuda::DecodeParams p = DecodeParamsFor(a, kc, batch, hq, dev_tables, a.table_stride, dev_lens, a.max_kv_len);
    const size_t ws = cuda::DecodeWorkspaceBytes(static_cast<int>(batch), static_cast<int>(hq), static_cast<int>(hkv),
                                                 static_cast<int>(s.head_dim), cuda::DecodePlanKvLen(p), decode_splits_,
                                                 decode_kernel_);
    if (in_block) {
      SQA_RETURN_IF_ERROR(EnsureStepWorkspace(step_decode_ws_, ws));
      p.workspace = step_decode_ws_.get();
      p.workspace_bytes = step_decode_ws_.size();
    } else {
      SQA_RETURN_IF_ERROR(GrowPoolWorkspace(&decode_ws_, &decode_ws_bytes_, ws));
      p.workspace = decode_ws_;
      p.workspace_bytes = decode_ws_bytes_;
    }
    return cuda::LaunchAttentionDecode(p, stream());
  }

  // Grow-only workspace that captured graphs may read: growing it makes every graph stale, and is
  // refused during a capture (the engine sizes everything in an eager run before capturing).
  absl::Status EnsureStepWorkspace(DeviceMemory& ws, size_t need) {
    if (need <= ws.size()) return absl::OkStatus();
    if (capturing_) return absl::FailedPreconditionError("a step workspace would have to grow during a graph capture");
    SQA_GPU_RETURN_IF_ERROR(cudaStreamSynchronize(stream()));  // graphs may still read the old one
    const size_t want = std::max(need, ws.size() * 2);
    ws.reset();
    SQA_ASSIGN_OR_RETURN(ws, DeviceMemory::Allocate(want));
    // Zero-filled: the decode kernel keeps counters in it that every launch leaves at zero.
    SQA_GPU_RETURN_IF_ERROR(cudaMemsetAsync(ws.get(), 0, want, stream()));
    ++generation_;
    return absl::OkStatus();
  }

  // Stream-ordered workspace of eager calls.
  absl::Status GrowPoolWorkspace(void** ws, size_t* bytes, size_t need) {
    if (need <= *bytes) return absl::OkStatus();
    if (capturing_) return absl::FailedPreconditionError("a workspace would have to grow during a graph capture");
    const size_t want = std::max(need, *bytes * 2);
    if (*ws) SQA_GPU_RETURN_IF_ERROR(cudaFreeAsync(*ws, stream()));
    *ws = nullptr;
    *bytes = 0;
    SQA_GPU_RETURN_IF_ERROR(cudaMallocAsync(ws, want, stream()));
    SQA_GPU_RETURN_IF_ERROR(cudaMemsetAsync(*ws, 0, want, stream()));  // see EnsureStepWorkspace
    *bytes = want;
    return absl::OkStatus();
  }

  cudaStream_t stream() const { return ctx_->stream.get(); }

  // The runtime's current device is per host thread; the engine may drive us from another thread
  // than the one that made us.
  absl::Status Enter() const {
    // A (thread-local) capture runs on the thread that began it, whose device is already ours.
    if (capturing_) return absl::OkStatus();
    SQA_GPU_RETURN_IF_ERROR(cudaSetDevice(device_));
    return absl::OkStatus();
  }

  absl::Status Merge(const void* const* outs, const float* const* lses, int parts, DType type, int64_t n, int heads,
                     int dh, void* out, float* lse_out) {
    cuda::MergeParams p;
    p.outs = outs;
    p.lses = lses;
    p.num_parts = parts;
    p.part_type = type == DType::kF32 ? cuda::PartialType::kF32 : cuda::PartialType::kBF16;
    p.n = n;
    p.heads = heads;
    p.head_dim = dh;
    p.out = out;
    p.lse_out = lse_out;
    return cuda::LaunchAttentionMerge(p, stream());
  }

  static absl::StatusOr<const CudaKvCache*> Cache(const KvCacheStorage* c, const char* op) {
    const auto* kc = dynamic_cast<const CudaKvCache*>(c);
    if (kc == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": the KV cache was not made by a CUDA backend"));
    }
    return kc;
  }

  static absl::Status CheckLayer(const KvCacheShape& s, int64_t layer, const char* op) {
    if (layer < 0 || layer >= s.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": layer ", layer, " outside [0, ", s.num_layers, ")"));
    }
    return absl::OkStatus();
  }

  static absl::Status CheckHeads(int64_t hq, int64_t hkv, const char* op) {
    if (hq <= 0 || hkv <= 0 || (hq % hkv != 0 && hkv % hq != 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": ", hq, " query heads and ", hkv, " KV heads: one must divide the other"));
    }
    return absl::OkStatus();
  }

  static absl::Status CheckBlockTable(const int32_t* table, int64_t n, int64_t num_blocks, const char* op) {
    if (n > 0 && table == nullptr) return absl::InvalidArgumentError(absl::StrCat(op, ": null block table"));
    for (int64_t i = 0; i < n; ++i) {
      if (table[i] < 0 || table[i] >= num_blocks) {
        return absl::InvalidArgumentError(
            absl::StrCat(op, ": block id ", table[i], " outside the cache's [0, ", num_blocks, ")"));
      }
    }
    return absl::OkStatus();
  }

  int device_ = 0;
  cuda::DecodeKernel decode_kernel_ = cuda::DecodeKernel::kAuto;  // BackendOptions::decode_kernel
  int decode_splits_ = 0;          // BackendOptions::decode_splits
  int decode_fuse_min_keys_ = 0;   // BackendOptions::decode_fuse_min_keys
  bool fuse_rope_kv_ = true;       // BackendOptions::fuse_rope_kv
  bool decode_early_reads_ = true;                                 // false for v5w
  std::string device_name_;
  std::shared_ptr<Context> ctx_;
  cuda::LtGemm gemm_;
  // WriteKv's checks of its arguments, and its slots staged on the device (not staged for n = 0).
  struct KvWrite {
    const CudaKvCache* kc = nullptr;
    const int64_t* dev_slots = nullptr;
    int64_t n = 0;
  };
  absl::StatusOr<KvWrite> PrepareWriteKv(KvCacheStorage& cache, int64_t layer, const TensorView& k,
                                         const TensorView& v, const int64_t* slots) {
    KvWrite w;
    SQA_ASSIGN_OR_RETURN(w.kc, Cache(&cache, "WriteKv"));
    const KvCacheShape& s = w.kc->shape();
    SQA_RETURN_IF_ERROR(CheckLayer(s, layer, "WriteKv"));
    SQA_RETURN_IF_ERROR(ExpectAct(k, "WriteKv", "k"));
    SQA_RETURN_IF_ERROR(ExpectAct(v, "WriteKv", "v"));
    if (k.shape.empty()) return absl::InvalidArgumentError("WriteKv: k must be [n, Hkv, head_dim]");
    const int64_t n = k.dim(0);
    SQA_RETURN_IF_ERROR(ExpectShape(k, {n, s.num_kv_heads, s.head_dim}, "WriteKv", "k"));
    SQA_RETURN_IF_ERROR(ExpectShape(v, {n, s.num_kv_heads, s.head_dim}, "WriteKv", "v"));
    if (k.dtype != v.dtype) return absl::InvalidArgumentError("WriteKv: k and v differ in dtype");
    if (n == 0) return w;
    if (slots == nullptr) return absl::InvalidArgumentError("WriteKv: null slots");
    const int64_t capacity = s.num_blocks * s.block_size;
    for (int64_t i = 0; i < n; ++i) {
      if (slots[i] >= capacity) {
        return absl::InvalidArgumentError(
            absl::StrCat("WriteKv: slot ", slots[i], " is beyond the cache's ", capacity, " slots"));
      }
    }
    const void* dev_slots = nullptr;
    SQA_RETURN_IF_ERROR(stager_.Stage(Staged::kSlots, {{slots, sizeof(int64_t) * n, &dev_slots}}));
    w.dev_slots = static_cast<const int64_t*>(dev_slots);
    w.n = n;
    return w;
  }

  // RoPE's host positions checked (present, none negative) and staged on the device.
  absl::StatusOr<const int32_t*> StagePositions(const int32_t* positions, int64_t n) {
    if (positions == nullptr) return absl::InvalidArgumentError("Rope: null positions");
    for (int64_t i = 0; i < n; ++i) {
      if (positions[i] < 0) return absl::InvalidArgumentError(absl::StrCat("Rope: negative position ", positions[i]));
    }
    const void* dev_pos = nullptr;
    SQA_RETURN_IF_ERROR(stager_.Stage(Staged::kPositions, {{positions, sizeof(int32_t) * n, &dev_pos}}));
    return static_cast<const int32_t*>(dev_pos);
  }

  // Whether the weights ws of one x take the stream form into outs (bf16 device tensors, the
  // kernel's shape rules, and LtGemm::UseStream for the launch, or with `per_weight` for each weight
  // alone): fills `so` when they do. LinearMany decides per weight, as Linear does, so that a
  // weight's result does not depend on the other weights of its launch.
  bool StreamOutputs(const TensorView& x, absl::Span<const TensorView> ws, absl::Span<const TensorView> outs,
                     bool per_weight, std::vector<cuda::SkinnyOutput>* so) const {
    so->clear();
    if (x.space != MemSpace::kDevice || x.dtype != DType::kBF16 || x.shape.empty() || ws.empty()) return false;
    const int64_t in = x.dim(-1);
    if (in == 0) return false;
    const int64_t n = x.numel() / in;
    std::vector<int64_t> features;
    for (size_t i = 0; i < ws.size(); ++i) {
      const TensorView& w = ws[i];
      const TensorView& o = outs[i];
      if (w.space != MemSpace::kDevice || w.dtype != DType::kBF16 || w.shape.size() != 2 || w.dim(1) != in ||
          o.space != MemSpace::kDevice || o.dtype != DType::kBF16 || o.numel() != n * w.dim(0) ||
          !cuda::SkinnyStreamApplies(x.data, w.data, o.data, DType::kBF16, n, in, w.dim(0))) {
        so->clear();
        return false;
      }
      so->push_back({w.data, o.data, w.dim(0)});
      features.push_back(w.dim(0));
      if (per_weight && !gemm_.UseStream(n, in, absl::MakeConstSpan(&features.back(), 1))) {
        so->clear();
        return false;
      }
    }
    if (!per_weight && !gemm_.UseStream(n, in, features)) {
      so->clear();
      return false;
    }
    return true;
  }

  // Whether x and w take the skinny kernel's fused forms: bf16 device tensors, w [out, in] with
  // x [n, in], n within the kernel's rows (and the backend's skinny setting).
  bool SkinnyInput(const TensorView& x, const TensorView& w) const {
    if (x.space != MemSpace::kDevice || x.dtype != DType::kBF16 || w.space != MemSpace::kDevice ||
        w.dtype != DType::kBF16 || w.shape.size() != 2 || x.shape.empty() || x.dim(-1) != w.dim(1) || w.dim(1) == 0) {
      return false;
    }
    const int64_t n = x.numel() / w.dim(1);
    return n >= 1 && n <= gemm_.skinny_max_rows();
  }
  HostStager stager_;
  void* decode_ws_ = nullptr;
  size_t decode_ws_bytes_ = 0;
  void* sample_ws_ = nullptr;
  size_t sample_ws_bytes_ = 0;
  std::vector<int32_t> tables_, lens_;

  // Step graphs (see the file comment).
  struct Graph {
    GraphExec exec;
    uint64_t generation = 0;
  };
  PinnedHostMemory step_host_;
  DeviceMemory step_dev_;
  CudaEvent step_uploaded_;
  bool step_upload_pending_ = false;
  bool capturing_ = false;
  uint64_t generation_ = 0;
  std::unordered_map<uint64_t, Graph> graphs_;
  DeviceMemory step_decode_ws_, step_sample_ws_;
  CudaStepGraphs step_graphs_{this};
};

absl::StatusOr<void*> CudaStepGraphs::Inputs(size_t bytes) {
  CudaBackend& b = *b_;
  SQA_RETURN_IF_ERROR(b.Enter());
  if (b.capturing_) return absl::FailedPreconditionError("StepGraphs::Inputs during a capture");
  if (b.step_upload_pending_) {
    SQA_GPU_RETURN_IF_ERROR(cudaEventSynchronize(b.step_uploaded_.get()));
    b.step_upload_pending_ = false;
  }
  if (!b.step_uploaded_) {
    SQA_ASSIGN_OR_RETURN(b.step_uploaded_, CudaEvent::Create());
  }
  if (bytes > b.step_host_.size()) {
    const size_t want = std::max({bytes, 2 * b.step_host_.size(), size_t{64} << 10});
    SQA_GPU_RETURN_IF_ERROR(cudaStreamSynchronize(b.stream()));  // graphs may still read the old mirror
    b.stager_.SetBlock(nullptr, nullptr, 0);
    b.step_host_.reset();
    b.step_dev_.reset();
    SQA_ASSIGN_OR_RETURN(b.step_host_, PinnedHostMemory::Allocate(want));
    SQA_ASSIGN_OR_RETURN(b.step_dev_, DeviceMemory::Allocate(want));
    b.stager_.SetBlock(b.step_host_.get(), b.step_dev_.get(), want);
    ++b.generation_;
  }
  return b.step_host_.get();
}

absl::Status CudaStepGraphs::Upload(size_t bytes) {
  CudaBackend& b = *b_;
  SQA_RETURN_IF_ERROR(b.Enter());
  if (bytes > b.step_host_.size()) return absl::InvalidArgumentError("StepGraphs::Upload: more bytes than Inputs gave");
  if (bytes == 0) return absl::OkStatus();
  SQA_GPU_RETURN_IF_ERROR(
      cudaMemcpyAsync(b.step_dev_.get(), b.step_host_.get(), bytes, cudaMemcpyHostToDevice, b.stream()));
  SQA_GPU_RETURN_IF_ERROR(cudaEventRecord(b.step_uploaded_.get(), b.stream()));
  b.step_upload_pending_ = true;
  return absl::OkStatus();
}

bool CudaStepGraphs::Has(uint64_t key) const {
  auto it = b_->graphs_.find(key);
  return it != b_->graphs_.end() && it->second.generation == b_->generation_;
}

absl::Status CudaStepGraphs::Replay(uint64_t key) {
  CudaBackend& b = *b_;
  SQA_RETURN_IF_ERROR(b.Enter());
  if (!Has(key)) return absl::FailedPreconditionError("StepGraphs::Replay: no current graph for this key");
  SQA_GPU_RETURN_IF_ERROR(cudaGraphLaunch(b.graphs_[key].exec.get(), b.stream()));
  return absl::OkStatus();
}

absl::Status CudaStepGraphs::BeginCapture() {
  CudaBackend& b = *b_;
  SQA_RETURN_IF_ERROR(b.Enter());
  if (b.capturing_) return absl::FailedPreconditionError("StepGraphs::BeginCapture: a capture is in progress");
  // Thread-local mode: only this thread's unsafe calls (synchronous allocation or copies) break it.
  SQA_GPU_RETURN_IF_ERROR(cudaStreamBeginCapture(b.stream(), cudaStreamCaptureModeThreadLocal));
  b.capturing_ = true;
  b.stager_.SetCapturing(true);
  return absl::OkStatus();
}

absl::Status CudaStepGraphs::EndCapture(uint64_t key) {
  CudaBackend& b = *b_;
  if (!b.capturing_) return absl::FailedPreconditionError("StepGraphs::EndCapture without BeginCapture");
  b.capturing_ = false;
  b.stager_.SetCapturing(false);
  cudaGraph_t graph = nullptr;  // (this thread's device is ours since BeginCapture)
  cudaError_t e = cudaStreamEndCapture(b.stream(), &graph);
  if (e != cudaSuccess) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();
    return cuda::GpuErrorToStatus(e, "cudaStreamEndCapture", __FILE__, __LINE__);
  }
  cudaGraphExec_t exec = nullptr;
  e = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return cuda::GpuErrorToStatus(e, "cudaGraphInstantiate", __FILE__, __LINE__);
  }
  CudaBackend::Graph& g = b.graphs_[key];
  g.exec = GraphExec(exec);
  g.generation = b.generation_;
  e = cudaGraphLaunch(exec, b.stream());
  if (e != cudaSuccess) {
    b.graphs_.erase(key);
    cudaGetLastError();
    return cuda::GpuErrorToStatus(e, "cudaGraphLaunch", __FILE__, __LINE__);
  }
  return absl::OkStatus();
}

void CudaStepGraphs::AbortCapture() {
  CudaBackend& b = *b_;
  if (!b.capturing_) return;
  b.capturing_ = false;
  b.stager_.SetCapturing(false);
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(b.stream(), &graph);
  if (graph != nullptr) cudaGraphDestroy(graph);
  cudaGetLastError();  // the capture's (non-sticky) error
}

void CudaStepGraphs::Invalidate() {
  CudaBackend& b = *b_;
  ++b.generation_;
  if (b.capturing_) return;
  cudaSetDevice(b.device_);
  cudaStreamSynchronize(b.stream());  // no launch of a graph about to be destroyed is in flight
  b.graphs_.clear();
}

int64_t CudaStepGraphs::num_graphs() const {
  int64_t n = 0;
  for (const auto& [k, g] : b_->graphs_) n += g.generation == b_->generation_ ? 1 : 0;
  return n;
}

}  // namespace

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the (non-sticky) error so later calls are not confused by it
    return 0;
  }
  return n;
}

absl::StatusOr<std::vector<SampledToken>> SampleOnCudaWithUniforms(Backend& backend, const TensorView& logits,
                                                                  absl::Span<const SamplingParams> params,
                                                                  absl::Span<const double> uniforms) {
  auto* cb = dynamic_cast<CudaBackend*>(&backend);
  if (cb == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("SampleOnCuda: backend ", backend.name(), " is not a CUDA backend"));
  }
  return cb->Sample(logits, params, uniforms);
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions& options) {
  const int count = CudaDeviceCount();
  if (count == 0) {
    return absl::FailedPreconditionError("no CUDA device is visible to this process (no GPU, or no driver)");
  }
  if (options.gpu_index < 0 || options.gpu_index >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("GPU index ", options.gpu_index, " does not exist; this machine has ", count, " CUDA device(s)"));
  }
  SQA_ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> b,
                       CudaBackend::Create(options));
  return std::unique_ptr<Backend>(std::move(b));
}

}  // namespace sqa
