#include "workers/engine/engine.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <future>
#include <string>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "services/common/log.h"
#include "services/common/status.h"
#include "workers/engine/shard/step_plan.h"

namespace sqa {
namespace {

// A reusable backend buffer that only grows; `View` hands out a view of the requested shape.
struct Scratch {
  std::unique_ptr<DeviceBuffer> buf;
  absl::StatusOr<TensorView> View(Backend& be, std::vector<int64_t> shape, DType dtype) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const size_t bytes = static_cast<size_t>(n) * DTypeSize(dtype);
    if (buf == nullptr || buf->size() < bytes) {
      buf.reset();
      // Grow by at least 1/4 so that slowly growing batches do not reallocate every step.
      const size_t want = std::max(bytes, bytes + bytes / 4);
      SQA_ASSIGN_OR_RETURN(buf, be.Allocate(want));
    }
    TensorView v;
    v.data = buf->data();
    v.dtype = dtype;
    v.space = MemSpace::kDevice;
    v.shape = std::move(shape);
    return v;
  }
};

// Rows [r0, r0 + rows) of a row-major tensor, reshaped to `shape` (whose product is the rows'
// element count).
TensorView SubRows(const TensorView& t, int64_t r0, std::vector<int64_t> shape) {
  const int64_t row_elems = t.shape.empty() ? 1 : t.numel() / t.shape[0];
  TensorView v = t;
  v.data = static_cast<char*>(t.data) + static_cast<size_t>(r0 * row_elems) * DTypeSize(t.dtype);
  v.shape = std::move(shape);
  return v;
}

struct LayerW {
  BackendWeight input_norm, q, k, v, o, post_norm, gate, up, down;
};

// Host copies of weight slices for heads-mode ranks. They stay alive as long as the engine: a
// backend may keep a view into them (the CPU backend uses f32 weights in place).
using HostSlice = std::unique_ptr<std::vector<uint8_t>>;

// Rows [r0, r1) for each range of a [rows, cols] weight, concatenated.
TensorView SliceRows(const TensorView& t, const std::vector<std::pair<int64_t, int64_t>>& ranges,
                     std::vector<HostSlice>& keep) {
  const size_t row_bytes = static_cast<size_t>(t.dim(1)) * DTypeSize(t.dtype);
  int64_t rows = 0;
  for (auto [a, b] : ranges) rows += b - a;
  auto buf = std::make_unique<std::vector<uint8_t>>(static_cast<size_t>(rows) * row_bytes);
  uint8_t* dst = buf->data();
  for (auto [a, b] : ranges) {
    std::memcpy(dst, static_cast<const uint8_t*>(t.data) + static_cast<size_t>(a) * row_bytes,
                static_cast<size_t>(b - a) * row_bytes);
    dst += static_cast<size_t>(b - a) * row_bytes;
  }
  TensorView v = t;
  v.data = buf->data();
  v.shape = {rows, t.dim(1)};
  keep.push_back(std::move(buf));
  return v;
}

// Columns [c0, c1) of a [rows, cols] weight.
TensorView SliceCols(const TensorView& t, int64_t c0, int64_t c1, std::vector<HostSlice>& keep) {
  const size_t es = DTypeSize(t.dtype);
  const int64_t rows = t.dim(0), cols = t.dim(1), w = c1 - c0;
  auto buf = std::make_unique<std::vector<uint8_t>>(static_cast<size_t>(rows * w) * es);
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(buf->data() + static_cast<size_t>(r * w) * es,
                static_cast<const uint8_t*>(t.data) + static_cast<size_t>(r * cols + c0) * es, static_cast<size_t>(w) * es);
  }
  TensorView v = t;
  v.data = buf->data();
  v.shape = {rows, w};
  keep.push_back(std::move(buf));
  return v;
}

// Activation buffers of one kind of pass. Graph steps have their own set, so that a prefill growing
// the eager buffers never moves an address a captured graph reads.
struct Acts {
  Scratch h, x, q, k, v, attn, tmp, gate, up, act, sel, sel_norm, logits, sampled;
};

// The host arrays of one pass as the ops get them: the engine's own vectors, or (graph steps)
// pointers into the backend's step input block.
struct StepArrays {
  Acts* acts = nullptr;
  const int32_t* tokens = nullptr;
  const int32_t* positions = nullptr;
  const int64_t* slots = nullptr;
  bool one_kv_run = false;            // one WriteKv over every row (padding rows have slot -1)
  const int32_t* kv_lens = nullptr;   // padded decode attention (graph steps); null: decode_refs
  const int32_t* tables = nullptr;
  int64_t table_stride = 0;
  int64_t max_kv_len = 0;
  int64_t plan_kv_len = 0;            // DecodeAttentionArgs::plan_kv_len
};

// Graph steps: batches up to this many rows; KV length bounds of at least this many tokens.
constexpr int64_t kMaxGraphBatch = 256;
constexpr int64_t kMinGraphKvBound = 256;

int64_t RoundUpPow2(int64_t x) {
  int64_t p = 1;
  while (p < x) p *= 2;
  return p;
}

absl::Status GroupBroken(int rank, const absl::Status& cause) {
  return absl::UnavailableError(absl::StrCat("worker group is broken (rank ", rank, "): ", cause.message(),
                                             "; it must be restarted"));
}

}  // namespace

struct Engine::Impl {
  std::shared_ptr<const Model> model;
  std::unique_ptr<Backend> backend;
  EngineOptions options;
  ModelConfig cfg;

  BackendWeight embed, final_norm, lm_head_storage;
  TensorView lm_head;  // view of lm_head_storage or of embed when tied
  std::vector<LayerW> layers;

  std::unique_ptr<KvCacheStorage> kv;
  std::unique_ptr<BlockPool> pool;

  struct Seq {
    std::vector<int32_t> blocks;  // this rank's blocks, holding its local_len tokens
    int64_t len = 0;              // tokens in the sequence
    int64_t local_len = 0;        // tokens stored on this rank (== len unless in sequence mode)
  };
  std::unordered_map<SeqId, Seq> seqs;
  SeqId next_id = 1;

  // Activation scratch, reused across calls: eager passes, and graph steps (fixed addresses).
  Acts acts, gacts;
  StepGraphStats graph_stats;
  absl::flat_hash_set<uint64_t> graph_seen, graph_failed;  // graph-step shapes run once / not capturable
  std::vector<SampleRowArgs> sample_args;
  std::vector<int32_t> sampled_host;
  // Host-side per-call arrays, reused.
  std::vector<int32_t> tokens, positions;
  std::vector<int64_t> slots, rows;
  std::vector<size_t> order;
  std::vector<KvSequenceRef> decode_refs;
  std::vector<Segment> ordered;
  std::vector<int64_t> first_row;
  std::vector<std::pair<Seq*, size_t>> undo;
  absl::flat_hash_set<SeqId> seen;

  // Group state. Local head counts equal the model's unless in heads mode.
  ShardMode mode = ShardMode::kNone;
  int rank = 0, world = 1;
  Communicator* control = nullptr;
  Communicator* data = nullptr;
  bool broken = false;
  absl::Status broken_cause;
  bool stopped = false;
  int64_t hq_l = 0, hkv_l = 0, ha_l = 0, inter_l = 0;
  std::vector<HostSlice> host_slices;
  bool sequence_group() const { return mode == ShardMode::kSequence && world > 1; }
  bool heads_group() const { return mode == ShardMode::kHeads && world > 1; }
  bool leader_of_group() const { return world > 1 && rank == 0; }

  // Sequence mode: this rank's zigzag pieces of each prefill segment in the pass.
  struct PrefillPiece {
    size_t seg = 0;  // index into `ordered`
    int64_t row0 = 0;  // first local row (piece A, then piece B)
    int64_t a0 = 0, a1 = 0, b0 = 0, b1 = 0;  // token ranges within the segment
  };
  std::vector<PrefillPiece> pieces;
  std::vector<int64_t> decode_new_local;  // per decode row: 1 when this rank stores its token
  std::unique_ptr<KvCacheStorage> ring_cache;
  int64_t ring_cache_blocks = 0;
  Scratch ring_k[2], ring_v[2], part_o_buf, part_lse_buf, gath_o_buf, gath_lse_buf, gath_h_buf, merge_lse_buf;
  std::vector<int32_t> ring_table;
  std::vector<int64_t> ring_slots;

  // Where this rank's time goes (shard/timings.h).
  GroupTimings timing;
  bool time_attention = false;
  double CommSeconds() const;  // control's and data's collective seconds so far
  // Runs `f`, a collective the engine thread waits on, and counts its seconds as exposed.
  template <class F>
  absl::Status Blocking(F&& f) {
    const double before = CommSeconds();
    absl::Status st = f();
    timing.exposed_comm_seconds += CommSeconds() - before;
    return st;
  }
  absl::StatusOr<Logits> TimedForward(absl::Span<const Segment> segments);

  absl::StatusOr<Logits> Forward(absl::Span<const Segment> segments);
  absl::Status RunLayers(int64_t total, int64_t num_decode, absl::Span<const Segment> segments,
                         const StepArrays& arr);
  bool GraphEligible(absl::Span<const Segment> segments, int64_t num_decode) const;
  absl::StatusOr<Logits> GraphDecode(absl::Span<const Segment> segments);
  absl::StatusOr<bool> GrowActs(Acts& a, int64_t rows, int64_t sample_rows);
  // Final norm and LM head over rows[0, m) of h into a.logits; `seln_out` (optional) gets the
  // normed rows.
  absl::Status LmHead(Acts& a, const TensorView& h, const int64_t* rows, int64_t m, TensorView* lg_out,
                      TensorView* seln_out);
  // Device sampling of the first n rows of lg with args[0, n): ids then log-probs in a.sampled.
  absl::Status DeviceSample(Acts& a, const TensorView& lg, const SampleRowArgs* args, int64_t n);
  static SampleRowArgs RowArgs(const Segment& s) {
    if (s.sample == nullptr) return SampleRowArgs{};
    return SampleRowArgs{s.sample->temperature, s.sample->top_k, s.sample->top_p,
                         UniformFromSeed(s.sample->seed, s.sample_step)};
  }
  absl::Status Collective(const char* what, const absl::Status& st);
  absl::Status AllReduceRows(const TensorView& t);
  absl::Status DecodeAttentionGroup(int64_t layer, const TensorView& q, int64_t num_decode, const TensorView& attn);
  absl::Status RingPrefill(int64_t layer, const PrefillPiece& piece, const TensorView& q, const TensorView& k,
                           const TensorView& v, const TensorView& attn);
  int64_t LocalSlot(const Seq& sq, int64_t local_index) const {
    return static_cast<int64_t>(sq.blocks[static_cast<size_t>(local_index / options.block_size)]) *
               options.block_size +
           local_index % options.block_size;
  }
};

namespace {
absl::StatusOr<BackendWeight> Upload(Backend& be, const TensorView& t, const std::string& name) {
  auto w = be.UploadWeight(t);
  if (!w.ok()) return absl::Status(w.status().code(), absl::StrCat(name, ": ", w.status().message()));
  return w;
}
}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::shared_ptr<const Model> model,
                                                       std::unique_ptr<Backend> backend,
                                                       const EngineOptions& options) {
  if (model == nullptr || backend == nullptr) return absl::InvalidArgumentError("Engine::Create: null model or backend");
  if (options.block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("block_size must be positive, got ", options.block_size));
  }
  if (options.max_chunk_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_chunk_tokens must be positive, got ", options.max_chunk_tokens));
  }
  auto impl = std::make_unique<Impl>();
  impl->model = std::move(model);
  impl->backend = std::move(backend);
  impl->options = options;
  impl->cfg = impl->model->config();
  const ModelConfig& c = impl->cfg;
  Backend& be = *impl->backend;
  const ModelWeights& w = impl->model->weights();
  if (static_cast<int64_t>(w.layers.size()) != c.num_hidden_layers) {
    return absl::InvalidArgumentError("model weights do not match num_hidden_layers");
  }
  if (c.attn_heads() % c.num_query_heads != 0 || c.attn_heads() % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported head layout: ", c.num_query_heads, " query heads and ",
                                                   c.num_key_value_heads,
                                                   " KV heads (one count must divide the other)"));
  }

  // Group set-up: who we are and which heads / MLP columns this rank computes.
  impl->mode = options.group.mode;
  impl->control = options.group.control;
  impl->data = options.group.data != nullptr ? options.group.data : options.group.control;
  impl->time_attention = options.group.time_attention;
  if (impl->control != nullptr) {
    impl->rank = impl->control->rank();
    impl->world = impl->control->world_size();
  }
  if (impl->world > 1 && impl->mode == ShardMode::kNone) {
    return absl::InvalidArgumentError("a group of several ranks needs a shard mode (heads or sequence)");
  }
  impl->hq_l = c.num_query_heads;
  impl->hkv_l = c.num_key_value_heads;
  impl->ha_l = c.attn_heads();
  impl->inter_l = c.intermediate_size;
  HeadShard hs;
  if (impl->heads_group()) {
    SQA_ASSIGN_OR_RETURN(hs, PlanHeadShard(c, impl->rank, impl->world));
    impl->hq_l = hs.hq_local;
    impl->hkv_l = hs.hkv_local;
    impl->ha_l = hs.ha_count;
    impl->inter_l = hs.inter_count;
  }
  // The slices of one layer's weights this rank holds (the whole tensor outside heads mode).
  const int64_t dh = c.head_dim;
  auto q_slice = [&](const TensorView& t) {
    if (!impl->heads_group()) return t;
    std::vector<std::pair<int64_t, int64_t>> ranges;
    for (int64_t h : hs.q_heads) ranges.push_back({h * dh, (h + 1) * dh});
    return SliceRows(t, ranges, impl->host_slices);
  };
  auto kv_slice = [&](const TensorView& t) {
    if (!impl->heads_group()) return t;
    return SliceRows(t, {{hs.kv_begin * dh, (hs.kv_begin + hs.hkv_local) * dh}}, impl->host_slices);
  };
  auto o_slice = [&](const TensorView& t) {
    if (!impl->heads_group()) return t;
    return SliceCols(t, hs.ha_begin * dh, (hs.ha_begin + hs.ha_count) * dh, impl->host_slices);
  };
  auto mlp_rows = [&](const TensorView& t) {
    if (!impl->heads_group()) return t;
    return SliceRows(t, {{hs.inter_begin, hs.inter_begin + hs.inter_count}}, impl->host_slices);
  };
  auto mlp_cols = [&](const TensorView& t) {
    if (!impl->heads_group()) return t;
    return SliceCols(t, hs.inter_begin, hs.inter_begin + hs.inter_count, impl->host_slices);
  };

  SQA_ASSIGN_OR_RETURN(impl->embed, Upload(be, w.embed_tokens, "model.embed_tokens.weight"));
  SQA_ASSIGN_OR_RETURN(impl->final_norm, Upload(be, w.final_norm, "model.norm.weight"));
  if (c.tie_word_embeddings || w.lm_head.data == w.embed_tokens.data) {
    impl->lm_head = impl->embed.view;
  } else {
    SQA_ASSIGN_OR_RETURN(impl->lm_head_storage, Upload(be, w.lm_head, "lm_head.weight"));
    impl->lm_head = impl->lm_head_storage.view;
  }
  impl->layers.resize(w.layers.size());
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& lw = w.layers[l];
    LayerW& o = impl->layers[l];
    const std::string p = absl::StrCat("model.layers.", l, ".");
    SQA_ASSIGN_OR_RETURN(o.input_norm, Upload(be, lw.input_norm, p + "input_layernorm.weight"));
    SQA_ASSIGN_OR_RETURN(o.q, Upload(be, q_slice(lw.q_proj), p + "self_attn.q_proj.weight"));
    SQA_ASSIGN_OR_RETURN(o.k, Upload(be, kv_slice(lw.k_proj), p + "self_attn.k_proj.weight"));
    SQA_ASSIGN_OR_RETURN(o.v, Upload(be, kv_slice(lw.v_proj), p + "self_attn.v_proj.weight"));
    SQA_ASSIGN_OR_RETURN(o.o, Upload(be, o_slice(lw.o_proj), p + "self_attn.o_proj.weight"));
    SQA_ASSIGN_OR_RETURN(o.post_norm, Upload(be, lw.post_norm, p + "post_attention_layernorm.weight"));
    SQA_ASSIGN_OR_RETURN(o.gate, Upload(be, mlp_rows(lw.gate_proj), p + "mlp.gate_proj.weight"));
    SQA_ASSIGN_OR_RETURN(o.up, Upload(be, mlp_rows(lw.up_proj), p + "mlp.up_proj.weight"));
    SQA_ASSIGN_OR_RETURN(o.down, Upload(be, mlp_cols(lw.down_proj), p + "mlp.down_proj.weight"));
  }

  KvCacheShape shape;
  shape.num_layers = c.num_hidden_layers;
  shape.block_size = options.block_size;
  shape.num_kv_heads = impl->hkv_l;
  shape.head_dim = c.head_dim;
  int64_t blocks = options.num_kv_blocks;
  if (blocks <= 0) {
    const int64_t per_block =
        2 * shape.block_elems() * static_cast<int64_t>(DTypeSize(be.act_dtype())) * shape.num_layers;
    blocks = per_block > 0 ? options.kv_cache_bytes / per_block : 0;
    if (blocks <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("kv_cache_bytes ", options.kv_cache_bytes,
                                                     " is too small for one KV block (", per_block,
                                                     " bytes over all layers)"));
    }
  }
  shape.num_blocks = blocks;
  SQA_ASSIGN_OR_RETURN(impl->kv, be.CreateKvCache(shape));
  impl->pool = std::make_unique<BlockPool>(blocks, options.block_size);
  SQA_VLOG(1) << "engine: " << c.LayoutName() << " model, " << blocks << " KV blocks of " << options.block_size
              << " tokens on " << be.name() << ", rank " << impl->rank << " of " << impl->world << " ("
              << ShardModeName(impl->mode) << ")";
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() {
  if (impl_ && impl_->leader_of_group()) StopGroup().IgnoreError();
}

int Engine::rank() const { return impl_->rank; }
int Engine::world_size() const { return impl_->world; }
ShardMode Engine::shard_mode() const { return impl_->mode; }
bool Engine::group_ok() const { return !impl_->broken; }
const GroupTimings& Engine::group_timings() const { return impl_->timing; }

double Engine::Impl::CommSeconds() const {
  double s = 0;
  for (const Communicator* c : {control, data == control ? nullptr : data}) {
    if (c == nullptr) continue;
    const CollectiveStats& st = c->stats();
    s += st.broadcast.seconds + st.all_reduce.seconds + st.all_gather.seconds + st.send_recv.seconds;
  }
  return s;
}

absl::StatusOr<Logits> Engine::Impl::TimedForward(absl::Span<const Segment> segments) {
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<Logits> out = Forward(segments);
  // A follower's pass ends with device work still queued (the leader's ends copying logits out).
  if (out.ok() && world > 1 && rank != 0) {
    if (absl::Status st = backend->Synchronize(); !st.ok()) out = st;
  }
  ++timing.steps;
  timing.step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

absl::Status Engine::Impl::Collective(const char* what, const absl::Status& st) {
  if (st.ok()) return st;
  if (!broken) {
    broken = true;
    broken_cause = absl::Status(st.code(), absl::StrCat(what, ": ", st.message()));
    SQA_LOG(ERROR) << "rank " << rank << ": " << broken_cause;
  }
  return GroupBroken(rank, broken_cause);
}

absl::Status Engine::StopGroup() {
  Impl& I = *impl_;
  if (!I.leader_of_group() || I.stopped || I.broken) return absl::OkStatus();
  I.stopped = true;
  StepPlan plan;
  plan.kind = StepPlan::Kind::kStop;
  return I.Collective("stop plan", SendPlan(*I.control, plan));
}

absl::Status Engine::ServeFollower(const std::function<void(double seconds)>& after_step) {
  Impl& I = *impl_;
  if (I.world <= 1 || I.rank == 0) return absl::FailedPreconditionError("ServeFollower is for ranks > 0 of a group");
  while (true) {
    if (I.broken) return GroupBroken(I.rank, I.broken_cause);
    // Idle groups wait for the leader's next step for long; a dead leader closes the connection,
    // which ends the wait at once.
    absl::StatusOr<StepPlan> plan = ReceivePlan(*I.control, std::chrono::hours(24 * 7));
    if (!plan.ok()) return I.Collective("waiting for the leader's step", plan.status());
    switch (plan->kind) {
      case StepPlan::Kind::kStop:
        return absl::OkStatus();
      case StepPlan::Kind::kRelease:
        Release(plan->seq);
        break;
      case StepPlan::Kind::kForward: {
        std::vector<Segment> segs;
        for (const PlanSegment& ps : plan->segments) {
          I.seqs.try_emplace(ps.seq);  // the leader numbers sequences; followers follow
          Segment sg;
          sg.seq = ps.seq;
          sg.tokens = absl::MakeConstSpan(ps.tokens);
          sg.all_logits = ps.all_logits;
          sg.hidden_state = ps.hidden_state;
          segs.push_back(sg);
        }
        const auto t0 = std::chrono::steady_clock::now();
        absl::StatusOr<Logits> out = I.TimedForward(segs);
        if (after_step) after_step(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        if (!out.ok() && I.broken) return out.status();
        if (!out.ok()) SQA_VLOG(1) << "rank " << I.rank << ": step refused: " << out.status();
        break;
      }
    }
  }
}

const ModelConfig& Engine::config() const { return impl_->cfg; }
Backend& Engine::backend() { return *impl_->backend; }
const BlockPool& Engine::kv_pool() const { return *impl_->pool; }
const EngineOptions& Engine::options() const { return impl_->options; }

SeqId Engine::NewSequence() {
  const SeqId id = impl_->next_id++;
  impl_->seqs.emplace(id, Impl::Seq{});
  return id;
}

void Engine::Release(SeqId seq) {
  auto it = impl_->seqs.find(seq);
  if (it == impl_->seqs.end()) return;
  if (impl_->leader_of_group() && !impl_->broken) {
    StepPlan plan;
    plan.kind = StepPlan::Kind::kRelease;
    plan.seq = seq;
    impl_->Collective("release plan", SendPlan(*impl_->control, plan)).IgnoreError();
  }
  impl_->pool->Free(it->second.blocks);
  impl_->seqs.erase(it);
}

int64_t Engine::SequenceLength(SeqId seq) const {
  auto it = impl_->seqs.find(seq);
  return it == impl_->seqs.end() ? 0 : it->second.len;
}

absl::StatusOr<Logits> Engine::Forward(absl::Span<const Segment> segments) { return impl_->TimedForward(segments); }

void Engine::SetStepGraphMode(StepGraphMode mode) { impl_->options.cuda_graphs = mode; }
const StepGraphStats& Engine::step_graph_stats() const { return impl_->graph_stats; }

absl::StatusOr<StepGraphMode> ParseStepGraphMode(const std::string& s) {
  if (s == "on") return StepGraphMode::kOn;
  if (s == "off") return StepGraphMode::kOff;
  return absl::InvalidArgumentError(absl::StrCat("--cuda-graphs wants on or off, got \"", s, "\""));
}

absl::StatusOr<Logits> Engine::Impl::Forward(absl::Span<const Segment> segments) {
  if (segments.empty()) return absl::InvalidArgumentError("Forward: no segments");
  const int64_t vocab = cfg.vocab_size;
  const int64_t max_pos = cfg.max_position_embeddings;
  if (broken) return GroupBroken(rank, broken_cause);
  // Tokens of a segment that this rank stores in its KV cache (all of them outside sequence mode).
  auto local_add = [&](const Segment& s, const Seq& sq) -> int64_t {
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    if (!sequence_group()) return n;
    if (n > 1) return PlanZigzag(n, world).tokens_of(rank, world);
    return DecodeOwner(sq.len, options.block_size, world) == rank ? 1 : 0;
  };
  // Validate everything before touching any state. Every rank of a group holds the same sequences,
  // so what fails here fails everywhere and the leader stops before broadcasting the step.
  int64_t need_blocks = 0;
  seen.clear();
  for (const Segment& s : segments) {
    auto it = seqs.find(s.seq);
    if (it == seqs.end()) return absl::NotFoundError(absl::StrCat("unknown sequence ", s.seq));
    if (!seen.insert(s.seq).second) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.seq, " appears twice in one forward pass"));
    }
    if (s.tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("empty segment for sequence ", s.seq));
    if (s.sample != nullptr) SQA_RETURN_IF_ERROR(ValidateSamplingParams(*s.sample));
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", t, " is outside the vocabulary [0, ", vocab, ")"));
      }
    }
    const int64_t new_len = it->second.len + static_cast<int64_t>(s.tokens.size());
    if (max_pos > 0 && new_len > max_pos) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.seq, " would have ", new_len,
                                                     " tokens; the model accepts at most ", max_pos,
                                                     " (max_position_embeddings)"));
    }
    if (sequence_group() && s.tokens.size() > 1 && it->second.len != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sequence-sharded groups prefill a prompt in one pass; sequence ", s.seq, " already has ", it->second.len,
          " tokens (raise the step token budget to the pool's maximum context)"));
    }
    need_blocks += pool->BlocksFor(it->second.local_len + local_add(s, it->second)) -
                   static_cast<int64_t>(it->second.blocks.size());
  }
  if (leader_of_group()) {
    StepPlan plan;
    plan.kind = StepPlan::Kind::kForward;
    for (const Segment& s : segments) {
      PlanSegment ps;
      ps.seq = s.seq;
      ps.all_logits = s.all_logits;
      ps.hidden_state = s.hidden_state;
      ps.tokens.assign(s.tokens.begin(), s.tokens.end());
      plan.segments.push_back(std::move(ps));
    }
    SQA_RETURN_IF_ERROR(Collective("step plan", Blocking([&] { return SendPlan(*control, plan); })));
  }
  bool short_of_blocks = need_blocks > pool->num_free();
  if (sequence_group()) {
    // Ranks store different tokens: agree on whether every rank has room.
    float flag = short_of_blocks ? 1.f : 0.f;
    SQA_RETURN_IF_ERROR(Collective("capacity agreement",
                                   Blocking([&] { return control->AllReduceSum(&flag, 1, DType::kF32); })));
    short_of_blocks = flag > 0.f;
  }
  if (short_of_blocks) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: need ", need_blocks, " blocks, ",
                                                     pool->num_free(), " free of ", pool->num_blocks(),
                                                     world > 1 ? " (on some rank of the group)" : ""));
  }
  // Take the blocks (cannot fail now); remember them to undo on a compute error.
  undo.clear();
  for (const Segment& s : segments) {
    Seq& sq = seqs[s.seq];
    const int64_t extra = pool->BlocksFor(sq.local_len + local_add(s, sq)) - static_cast<int64_t>(sq.blocks.size());
    undo.emplace_back(&sq, sq.blocks.size());
    if (extra > 0) {
      auto got = pool->Allocate(extra);
      SQA_CHECK(got.ok());
      sq.blocks.insert(sq.blocks.end(), got->begin(), got->end());
    }
  }

  // Token order: one-token segments first (they share one batched decode attention), then the rest.
  order.clear();
  for (size_t i = 0; i < segments.size(); ++i) {
    if (segments[i].tokens.size() == 1) order.push_back(i);
  }
  const int64_t num_decode = static_cast<int64_t>(order.size());
  for (size_t i = 0; i < segments.size(); ++i) {
    if (segments[i].tokens.size() != 1) order.push_back(i);
  }
  ordered.clear();
  for (size_t i : order) ordered.push_back(segments[i]);
  tokens.clear();
  positions.clear();
  slots.clear();
  pieces.clear();
  decode_new_local.clear();
  first_row.assign(segments.size(), 0);
  std::vector<int64_t> local_rows(segments.size(), 0), stored(ordered.size(), 0);
  for (size_t oi = 0; oi < ordered.size(); ++oi) {
    const Segment& s = ordered[oi];
    const Seq& sq = seqs[s.seq];
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    first_row[order[oi]] = static_cast<int64_t>(tokens.size());
    auto push = [&](int64_t j, bool store) {  // token j of the segment; `store`: in this rank's cache
      tokens.push_back(s.tokens[static_cast<size_t>(j)]);
      positions.push_back(static_cast<int32_t>(sq.len + j));
      slots.push_back(store ? LocalSlot(sq, sq.local_len + stored[oi]) : -1);
      if (store) ++stored[oi];
    };
    if (sequence_group() && n > 1) {
      const ZigzagSplit z = PlanZigzag(n, world);
      PrefillPiece pc;
      pc.seg = oi;
      pc.row0 = static_cast<int64_t>(tokens.size());
      std::tie(pc.a0, pc.a1) = z.first(rank);
      std::tie(pc.b0, pc.b1) = z.second(rank, world);
      for (int64_t j = pc.a0; j < pc.a1; ++j) push(j, true);
      for (int64_t j = pc.b0; j < pc.b1; ++j) push(j, true);
      pieces.push_back(pc);
    } else if (sequence_group()) {  // a decode token: every rank computes it, one rank stores it
      const bool mine = DecodeOwner(sq.len, options.block_size, world) == rank;
      push(0, mine);
      decode_new_local.push_back(mine ? 1 : 0);
    } else {
      for (int64_t j = 0; j < n; ++j) push(j, true);
    }
    local_rows[order[oi]] = static_cast<int64_t>(tokens.size()) - first_row[order[oi]];
  }
  const int64_t total = static_cast<int64_t>(tokens.size());

  auto fail = [&](const absl::Status& st) {
    for (auto& [sq, keep] : undo) {
      const std::vector<int32_t> extra(sq->blocks.begin() + static_cast<std::ptrdiff_t>(keep), sq->blocks.end());
      pool->Free(extra);
      sq->blocks.resize(keep);
    }
    return st;
  };
  auto commit = [&] {
    for (size_t oi = 0; oi < ordered.size(); ++oi) {
      Seq& sq = seqs[ordered[oi].seq];
      sq.len += static_cast<int64_t>(ordered[oi].tokens.size());
      sq.local_len += stored[oi];
    }
  };

  if (GraphEligible(segments, num_decode)) {
    absl::StatusOr<Logits> g = GraphDecode(segments);
    if (!g.ok()) return fail(g.status());
    commit();
    return g;
  }

  const int64_t d = cfg.hidden_size;
  const DType act = backend->act_dtype();
  // Sequence groups: logits of every prompt position need the rows other ranks computed; they are
  // gathered (each rank's rows padded to the largest count) and addressed as [rank][row].
  bool gather_rows = false;
  int64_t gather_stride = 0;
  std::vector<std::vector<int64_t>> piece_offset;  // [rank][piece]: first prefill row of that piece
  if (sequence_group()) {
    for (const PrefillPiece& pc : pieces) gather_rows = gather_rows || ordered[pc.seg].all_logits;
    piece_offset.assign(static_cast<size_t>(world), {});
    for (int r = 0; r < world; ++r) {
      int64_t off = num_decode;
      for (const PrefillPiece& pc : pieces) {
        piece_offset[static_cast<size_t>(r)].push_back(off);
        off += PlanZigzag(static_cast<int64_t>(ordered[pc.seg].tokens.size()), world).tokens_of(r, world);
      }
      gather_stride = std::max(gather_stride, off);
    }
    if (gather_rows) {  // the gather reads gather_stride rows of h on every rank
      auto grown = acts.h.View(*backend, {gather_stride, d}, act);
      if (!grown.ok()) return fail(grown.status());
    }
  }

  StepArrays arr;
  arr.acts = &acts;
  arr.tokens = tokens.data();
  arr.positions = positions.data();
  arr.slots = slots.data();
  absl::Status st = RunLayers(total, num_decode, ordered, arr);
  if (!st.ok()) return fail(st);

  TensorView hsrc;
  if (gather_rows) {
    auto gathered = [&]() -> absl::StatusOr<TensorView> {
      SQA_ASSIGN_OR_RETURN(TensorView hl, acts.h.View(*backend, {gather_stride, d}, act));
      SQA_ASSIGN_OR_RETURN(TensorView g, gath_h_buf.View(*backend, {world * gather_stride, d}, act));
      SQA_RETURN_IF_ERROR(backend->Synchronize());
      SQA_RETURN_IF_ERROR(
          Collective("hidden-state gather", Blocking([&] { return data->AllGather(hl.data, hl.nbytes(), g.data); })));
      return g;
    }();
    if (!gathered.ok()) return fail(gathered.status());
    hsrc = *gathered;
  }

  if (world > 1 && rank != 0) {  // followers: the leader produces the logits
    commit();
    Logits none;
    none.vocab = vocab;
    return none;
  }

  // Logits of the requested rows, in the caller's segment order, after the rows to sample from (the
  // last position of each segment with `sample`, in segment order).
  Logits out;
  out.vocab = vocab;
  rows.clear();
  out.row_begin.resize(segments.size());
  out.sampled.assign(segments.size(), SampledToken{});
  std::vector<int64_t> seg_piece(segments.size(), -1);
  for (size_t pi = 0; pi < pieces.size(); ++pi) seg_piece[order[pieces[pi].seg]] = static_cast<int64_t>(pi);
  sample_args.clear();
  for (size_t i = 0; i < segments.size(); ++i) {
    if (segments[i].sample == nullptr) continue;
    rows.push_back(first_row[i] + local_rows[i] - 1);  // rank 0 holds the last token
    sample_args.push_back(RowArgs(segments[i]));
  }
  const int64_t num_sampled = static_cast<int64_t>(rows.size());
  for (size_t i = 0; i < segments.size(); ++i) {
    out.row_begin[i] = static_cast<int64_t>(rows.size()) - num_sampled;
    const int64_t n = static_cast<int64_t>(segments[i].tokens.size());
    const int64_t last_local = first_row[i] + local_rows[i] - 1;  // rank 0 holds the last token
    if (segments[i].sample != nullptr && !segments[i].sample_logits) continue;
    if (segments[i].all_logits && seg_piece[i] >= 0) {
      // Token j of a zigzag-split prompt: find the rank and the row that computed it.
      const ZigzagSplit z = PlanZigzag(n, world);
      for (int64_t j = 0; j < n; ++j) {
        for (int r = 0; r < world; ++r) {
          auto [a0, a1] = z.first(r);
          auto [b0, b1] = z.second(r, world);
          const int64_t base = r * gather_stride + piece_offset[static_cast<size_t>(r)][static_cast<size_t>(seg_piece[i])];
          if (j >= a0 && j < a1) rows.push_back(base + j - a0);
          if (j >= b0 && j < b1) rows.push_back(base + (a1 - a0) + j - b0);
        }
      }
    } else if (segments[i].all_logits) {
      for (int64_t j = 0; j < n; ++j) rows.push_back(first_row[i] + j);
    } else {
      rows.push_back(last_local);
    }
  }
  const int64_t m = static_cast<int64_t>(rows.size());
  const int64_t returned = m - num_sampled;
  auto compute_logits = [&]() -> absl::Status {
    TensorView h = hsrc;
    if (!gather_rows) {
      SQA_ASSIGN_OR_RETURN(h, acts.h.View(*backend, {total, d}, act));
    }
    TensorView lg, seln;
    SQA_RETURN_IF_ERROR(LmHead(acts, h, rows.data(), m, &lg, &seln));
    bool want_hidden = false;
    for (const Segment& s : segments) want_hidden = want_hidden || s.hidden_state;
    if (want_hidden) {  // Encode's OUTPUT_HIDDEN_STATE: copy seln to the host as f32
      std::vector<uint8_t> raw(static_cast<size_t>(returned * d) * DTypeSize(act));
      SQA_RETURN_IF_ERROR(backend->CopyToHost(SubRows(seln, num_sampled, {returned, d}), raw.data()));
      SQA_RETURN_IF_ERROR(backend->Synchronize());
      out.hidden_size = d;
      out.hidden.resize(static_cast<size_t>(returned * d));
      ConvertToF32(raw.data(), act, static_cast<size_t>(returned * d), out.hidden.data());
    }
    if (num_sampled > 0 && backend->has_device_sampler()) {
      SQA_RETURN_IF_ERROR(DeviceSample(acts, lg, sample_args.data(), num_sampled));
    }
    out.data.resize(static_cast<size_t>(returned * vocab));
    SQA_RETURN_IF_ERROR(backend->CopyToHost(SubRows(lg, num_sampled, {returned, vocab}), out.data.data()));
    if (num_sampled > 0 && backend->has_device_sampler()) {
      SQA_ASSIGN_OR_RETURN(TensorView sv, acts.sampled.View(*backend, {2 * num_sampled}, DType::kI32));
      sampled_host.resize(static_cast<size_t>(2 * num_sampled));
      SQA_RETURN_IF_ERROR(backend->CopyToHost(sv, sampled_host.data()));
    } else if (num_sampled > 0) {  // host sampling: the rule of sampling.h on the copied rows
      std::vector<float> srows(static_cast<size_t>(num_sampled * vocab));
      SQA_RETURN_IF_ERROR(backend->CopyToHost(SubRows(lg, 0, {num_sampled, vocab}), srows.data()));
      SQA_RETURN_IF_ERROR(backend->Synchronize());
      sampled_host.resize(static_cast<size_t>(2 * num_sampled));
      int64_t r = 0;
      for (const Segment& s : segments) {
        if (s.sample == nullptr) continue;
        const SampledToken t = SampleToken(srows.data() + r * vocab, vocab, *s.sample, s.sample_step);
        sampled_host[static_cast<size_t>(r)] = t.token;
        std::memcpy(&sampled_host[static_cast<size_t>(num_sampled + r)], &t.logprob, sizeof(float));
        ++r;
      }
    }
    int64_t r = 0;
    for (size_t i = 0; i < segments.size(); ++i) {
      if (segments[i].sample == nullptr) continue;
      out.sampled[i].token = sampled_host[static_cast<size_t>(r)];
      std::memcpy(&out.sampled[i].logprob, &sampled_host[static_cast<size_t>(num_sampled + r)], sizeof(float));
      ++r;
    }
    return backend->Synchronize();
  };
  st = compute_logits();
  if (!st.ok()) return fail(st);

  commit();
  return out;
}

absl::Status Engine::Impl::RunLayers(int64_t total, int64_t num_decode, absl::Span<const Segment> ordered,
                                     const StepArrays& arr) {
  Backend& be = *backend;
  const ModelConfig& c = cfg;
  const DType act = be.act_dtype();
  // Local head and MLP widths: the whole model outside heads mode.
  const int64_t d = c.hidden_size, dh = c.head_dim, hq = hq_l, hkv = hkv_l, ha = ha_l, inter = inter_l;
  const float eps = static_cast<float>(c.rms_norm_eps);
  RopeArgs rope;
  rope.theta = c.rope_theta;
  rope.position_scale = c.rope_scaling.type == "linear" ? c.rope_scaling.factor : 1.0;

  Acts& bufs = *arr.acts;
  SQA_ASSIGN_OR_RETURN(TensorView h, bufs.h.View(be, {total, d}, act));
  SQA_ASSIGN_OR_RETURN(TensorView x, bufs.x.View(be, {total, d}, act));
  SQA_ASSIGN_OR_RETURN(TensorView q, bufs.q.View(be, {total, hq * dh}, act));
  SQA_ASSIGN_OR_RETURN(TensorView k, bufs.k.View(be, {total, hkv * dh}, act));
  SQA_ASSIGN_OR_RETURN(TensorView v, bufs.v.View(be, {total, hkv * dh}, act));
  SQA_ASSIGN_OR_RETURN(TensorView attn, bufs.attn.View(be, {total, ha * dh}, act));
  SQA_ASSIGN_OR_RETURN(TensorView tmp, bufs.tmp.View(be, {total, d}, act));
  SQA_ASSIGN_OR_RETURN(TensorView gate, bufs.gate.View(be, {total, inter}, act));
  SQA_ASSIGN_OR_RETURN(TensorView up, bufs.up.View(be, {total, inter}, act));
  SQA_ASSIGN_OR_RETURN(TensorView a, bufs.act.View(be, {total, inter}, act));
  TensorView q3 = SubRows(q, 0, {total, hq, dh});
  TensorView k3 = SubRows(k, 0, {total, hkv, dh});
  TensorView v3 = SubRows(v, 0, {total, hkv, dh});

  // Per-segment attention arguments (block tables are stable during the pass).
  decode_refs.clear();
  for (int64_t i = 0; arr.kv_lens == nullptr && i < num_decode; ++i) {
    const Seq& sq = seqs[ordered[static_cast<size_t>(i)].seq];
    const int64_t added = sequence_group() ? decode_new_local[static_cast<size_t>(i)] : 1;
    decode_refs.push_back({sq.blocks.data(), sq.local_len + added});
  }
  // Rows whose K/V this rank stores, as runs of consecutive rows (a decode token of a sequence
  // group is stored by one rank only).
  std::vector<std::pair<int64_t, int64_t>> kv_runs;
  if (arr.one_kv_run && total > 0) kv_runs.push_back({0, total});
  for (int64_t r = 0; !arr.one_kv_run && r < total; ++r) {
    if (arr.slots[r] < 0) continue;
    if (!kv_runs.empty() && kv_runs.back().second == r) {
      kv_runs.back().second = r + 1;
    } else {
      kv_runs.push_back({r, r + 1});
    }
  }

  SQA_RETURN_IF_ERROR(be.Embed(embed.view, arr.tokens, total, h));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerW& w = layers[static_cast<size_t>(l)];
    // The previous layer's MLP output (tmp) joins the residual here, with this layer's norm
    // (fused where the backend can: one kernel instead of two).
    if (l == 0) {
      SQA_RETURN_IF_ERROR(be.RmsNorm(h, w.input_norm.view, eps, x));
    } else {
      SQA_RETURN_IF_ERROR(be.AddRmsNorm(h, tmp, w.input_norm.view, eps, x));
    }
    const TensorView qkv_w[3] = {w.q.view, w.k.view, w.v.view};
    const TensorView qkv_out[3] = {q, k, v};
    SQA_RETURN_IF_ERROR(be.LinearMany(x, qkv_w, qkv_out));
    if (kv_runs.size() == 1 && kv_runs[0].first == 0 && kv_runs[0].second == total) {
      // Every row's K/V is stored here: RoPE and the cache write in one op (one kernel on CUDA).
      SQA_RETURN_IF_ERROR(be.RopeQKWriteKv(q3, k3, v3, arr.positions, rope, *kv, l, arr.slots));
    } else {
      SQA_RETURN_IF_ERROR(be.RopeQK(q3, k3, arr.positions, rope));
      for (auto [r0, r1] : kv_runs) {
        SQA_RETURN_IF_ERROR(be.WriteKv(*kv, l, SubRows(k3, r0, {r1 - r0, hkv, dh}),
                                       SubRows(v3, r0, {r1 - r0, hkv, dh}), arr.slots + r0));
      }
    }
    if (num_decode > 0 && sequence_group()) {
      SQA_RETURN_IF_ERROR(DecodeAttentionGroup(l, q, num_decode, attn));
    } else if (num_decode > 0) {
      DecodeAttentionArgs da;
      da.cache = kv.get();
      da.layer = l;
      da.q = SubRows(q, 0, {num_decode, hq, dh});
      if (arr.kv_lens != nullptr) {
        da.kv_lens = arr.kv_lens;
        da.block_tables = arr.tables;
        da.table_stride = arr.table_stride;
        da.max_kv_len = arr.max_kv_len;
        da.plan_kv_len = arr.plan_kv_len;
      } else {
        da.seqs = decode_refs;
      }
      da.out = SubRows(attn, 0, {num_decode, ha, dh});
      da.fresh_kv_tokens = 1;  // WriteKv above appended each decode row's one new token
      SQA_RETURN_IF_ERROR(be.AttentionDecode(da));
    }
    if (sequence_group()) {
      for (const PrefillPiece& pc : pieces) SQA_RETURN_IF_ERROR(RingPrefill(l, pc, q, k, v, attn));
    } else {
      // Timed only on request: the two synchronizations cost a little on every layer.
      const bool timed = time_attention && static_cast<int64_t>(ordered.size()) > num_decode;
      std::chrono::steady_clock::time_point attn0;
      if (timed) {
        SQA_RETURN_IF_ERROR(be.Synchronize());
        attn0 = std::chrono::steady_clock::now();
      }
      int64_t row = num_decode;
      for (size_t i = static_cast<size_t>(num_decode); i < ordered.size(); ++i) {
        const Segment& s = ordered[i];
        const Seq& sq = seqs[s.seq];
        const int64_t n = static_cast<int64_t>(s.tokens.size());
        PrefillAttentionArgs pa;
        pa.cache = kv.get();
        pa.layer = l;
        pa.q = SubRows(q, row, {n, hq, dh});
        pa.q_pos0 = sq.len;
        pa.kv = {sq.blocks.data(), sq.len + n};
        pa.causal = true;
        pa.out = SubRows(attn, row, {n, ha, dh});
        SQA_RETURN_IF_ERROR(be.AttentionPrefill(pa));
        row += n;
      }
      if (timed) {
        SQA_RETURN_IF_ERROR(be.Synchronize());
        timing.attention_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - attn0).count();
      }
    }
    SQA_RETURN_IF_ERROR(be.Linear(attn, w.o.view, tmp));
    if (heads_group()) SQA_RETURN_IF_ERROR(AllReduceRows(tmp));  // row-parallel W_O
    SQA_RETURN_IF_ERROR(be.AddRmsNorm(h, tmp, w.post_norm.view, eps, x));
    SQA_RETURN_IF_ERROR(be.LinearSwiGlu(x, w.gate.view, w.up.view, gate, up, a));
    SQA_RETURN_IF_ERROR(be.Linear(a, w.down.view, tmp));
    if (heads_group()) SQA_RETURN_IF_ERROR(AllReduceRows(tmp));  // row-parallel MLP down
    // The next layer adds tmp with its input norm; after the last one it is added here.
  }
  if (c.num_hidden_layers > 0) SQA_RETURN_IF_ERROR(be.AddInPlace(h, tmp));
  return absl::OkStatus();
}

absl::Status Engine::Impl::LmHead(Acts& a, const TensorView& h, const int64_t* rows_in, int64_t m, TensorView* lg_out,
                                  TensorView* seln_out) {
  const int64_t d = cfg.hidden_size;
  const DType act = backend->act_dtype();
  SQA_ASSIGN_OR_RETURN(TensorView sel, a.sel.View(*backend, {m, d}, act));
  SQA_ASSIGN_OR_RETURN(TensorView seln, a.sel_norm.View(*backend, {m, d}, act));
  SQA_ASSIGN_OR_RETURN(TensorView lg, a.logits.View(*backend, {m, cfg.vocab_size}, DType::kF32));
  SQA_RETURN_IF_ERROR(backend->GatherRows(h, rows_in, m, sel));
  SQA_RETURN_IF_ERROR(backend->RmsNorm(sel, final_norm.view, static_cast<float>(cfg.rms_norm_eps), seln));
  SQA_RETURN_IF_ERROR(backend->Linear(seln, lm_head, lg));
  *lg_out = lg;
  if (seln_out != nullptr) *seln_out = seln;
  return absl::OkStatus();
}

absl::Status Engine::Impl::DeviceSample(Acts& a, const TensorView& lg, const SampleRowArgs* args, int64_t n) {
  SQA_ASSIGN_OR_RETURN(TensorView sv, a.sampled.View(*backend, {2 * n}, DType::kI32));
  TensorView tok = sv, lp = sv;
  tok.shape = {n};
  lp.shape = {n};
  lp.dtype = DType::kF32;
  lp.data = sv.as<int32_t>() + n;
  return backend->SampleTokens(SubRows(lg, 0, {n, cfg.vocab_size}), args, tok, lp);
}

bool Engine::Impl::GraphEligible(absl::Span<const Segment> segments, int64_t num_decode) const {
  if (options.cuda_graphs == StepGraphMode::kOff || world > 1 || backend->step_graphs() == nullptr) return false;
  if (num_decode != static_cast<int64_t>(segments.size()) || num_decode > kMaxGraphBatch) return false;
  for (const Segment& s : segments) {
    if (s.hidden_state) return false;
  }
  return true;
}

// Sizes every graph-step buffer for `rows` rows; true when one of them moved (graphs that read it
// are stale).
absl::StatusOr<bool> Engine::Impl::GrowActs(Acts& a, int64_t rows, int64_t sample_rows) {
  Backend& be = *backend;
  const DType act = be.act_dtype();
  const int64_t d = cfg.hidden_size, dh = cfg.head_dim;
  bool moved = false;
  auto grow = [&](Scratch& s, std::vector<int64_t> shape, DType t) -> absl::Status {
    void* before = s.buf ? s.buf->data() : nullptr;
    SQA_ASSIGN_OR_RETURN(TensorView v, s.View(be, std::move(shape), t));
    moved = moved || (before != nullptr && before != v.data);
    return absl::OkStatus();
  };
  SQA_RETURN_IF_ERROR(grow(a.h, {rows, d}, act));
  SQA_RETURN_IF_ERROR(grow(a.x, {rows, d}, act));
  SQA_RETURN_IF_ERROR(grow(a.q, {rows, hq_l * dh}, act));
  SQA_RETURN_IF_ERROR(grow(a.k, {rows, hkv_l * dh}, act));
  SQA_RETURN_IF_ERROR(grow(a.v, {rows, hkv_l * dh}, act));
  SQA_RETURN_IF_ERROR(grow(a.attn, {rows, ha_l * dh}, act));
  SQA_RETURN_IF_ERROR(grow(a.tmp, {rows, d}, act));
  SQA_RETURN_IF_ERROR(grow(a.gate, {rows, inter_l}, act));
  SQA_RETURN_IF_ERROR(grow(a.up, {rows, inter_l}, act));
  SQA_RETURN_IF_ERROR(grow(a.act, {rows, inter_l}, act));
  SQA_RETURN_IF_ERROR(grow(a.sel, {rows, d}, act));
  SQA_RETURN_IF_ERROR(grow(a.sel_norm, {rows, d}, act));
  SQA_RETURN_IF_ERROR(grow(a.logits, {rows, cfg.vocab_size}, DType::kF32));
  if (sample_rows > 0) SQA_RETURN_IF_ERROR(grow(a.sampled, {2 * sample_rows}, DType::kI32));
  return moved;
}

// A decode-only step through the backend's step graphs: the batch padded to a power of two with
// rows that read no keys (kv_len 0) and store nothing (slot -1), the KV length bound rounded up
// so that the step's shape (and its graph) stays the same while the sequences grow. Every host
// array goes into the backend's input block, uploaded in one copy.
absl::StatusOr<Logits> Engine::Impl::GraphDecode(absl::Span<const Segment> segments) {
  StepGraphs& g = *backend->step_graphs();
  const int64_t n = static_cast<int64_t>(segments.size());
  const int64_t bp = RoundUpPow2(n);
  const int64_t bs = options.block_size, vocab = cfg.vocab_size;
  int64_t max_len = 0;
  bool any_sample = false, any_random = false, any_logits = false;
  for (const Segment& s : segments) {
    max_len = std::max(max_len, seqs[s.seq].local_len + 1);
    if (s.sample != nullptr) {
      any_sample = true;
      any_random = any_random || s.sample->temperature > 0.f;
    }
    any_logits = any_logits || s.sample == nullptr || s.sample_logits;
  }
  const int64_t bound = std::max(kMinGraphKvBound, RoundUpPow2(max_len));
  const int64_t stride = (bound + bs - 1) / bs;
  const int sample_kind = !any_sample ? 0 : any_random ? 2 : 1;  // 1: greedy only (no sort)
  const uint64_t key = (static_cast<uint64_t>(bp) << 40) | (static_cast<uint64_t>(std::countr_zero(
                           static_cast<uint64_t>(bound))) << 8) | static_cast<uint64_t>(sample_kind);

  // The input block: one 256-byte aligned section per array.
  size_t bytes = 0;
  auto section = [&](size_t b) {
    const size_t at = bytes;
    bytes += (b + 255) & ~size_t{255};
    return at;
  };
  const size_t o_tok = section(4 * bp), o_pos = section(4 * bp), o_slot = section(8 * bp), o_rows = section(8 * bp),
               o_lens = section(4 * bp), o_tab = section(static_cast<size_t>(4 * bp * stride)),
               o_samp = sample_kind ? section(sizeof(SampleRowArgs) * bp) : 0;
  SQA_ASSIGN_OR_RETURN(bool moved, GrowActs(gacts, bp, sample_kind ? bp : 0));
  if (moved) {
    g.Invalidate();
    ++graph_stats.invalidations;
  }
  SQA_ASSIGN_OR_RETURN(void* block, g.Inputs(bytes));
  char* base = static_cast<char*>(block);
  auto* tok = reinterpret_cast<int32_t*>(base + o_tok);
  auto* pos = reinterpret_cast<int32_t*>(base + o_pos);
  auto* slot = reinterpret_cast<int64_t*>(base + o_slot);
  auto* row = reinterpret_cast<int64_t*>(base + o_rows);
  auto* lens = reinterpret_cast<int32_t*>(base + o_lens);
  auto* tab = reinterpret_cast<int32_t*>(base + o_tab);
  auto* samp = sample_kind ? reinterpret_cast<SampleRowArgs*>(base + o_samp) : nullptr;
  std::memset(tab, 0, static_cast<size_t>(4 * bp * stride));
  for (int64_t b = 0; b < bp; ++b) {
    const bool real = b < n;
    const Seq* sq = real ? &seqs[segments[static_cast<size_t>(b)].seq] : nullptr;
    tok[b] = real ? tokens[static_cast<size_t>(b)] : 0;
    pos[b] = real ? positions[static_cast<size_t>(b)] : 0;
    slot[b] = real ? slots[static_cast<size_t>(b)] : -1;
    row[b] = b;
    lens[b] = real ? static_cast<int32_t>(sq->local_len + 1) : 0;
    if (real) {
      const int64_t nb = (sq->local_len + 1 + bs - 1) / bs;
      std::memcpy(tab + b * stride, sq->blocks.data(), sizeof(int32_t) * static_cast<size_t>(nb));
    }
    if (samp != nullptr) samp[b] = real ? RowArgs(segments[static_cast<size_t>(b)]) : SampleRowArgs{};
  }
  SQA_RETURN_IF_ERROR(g.Upload(bytes));

  StepArrays arr;
  arr.acts = &gacts;
  arr.tokens = tok;
  arr.positions = pos;
  arr.slots = slot;
  arr.one_kv_run = true;
  arr.kv_lens = lens;
  arr.tables = tab;
  arr.table_stride = stride;
  arr.max_kv_len = bound;
  // The graph of this bound serves steps whose longest sequence has more than bound / 2 keys
  // (any length at the smallest bound).
  arr.plan_kv_len = bound > kMinGraphKvBound ? bound / 2 + 1 : 0;
  TensorView lg;
  auto body = [&]() -> absl::Status {
    SQA_RETURN_IF_ERROR(RunLayers(bp, bp, {}, arr));
    SQA_ASSIGN_OR_RETURN(TensorView h, gacts.h.View(*backend, {bp, cfg.hidden_size}, backend->act_dtype()));
    SQA_RETURN_IF_ERROR(LmHead(gacts, h, row, bp, &lg, nullptr));
    if (samp != nullptr) SQA_RETURN_IF_ERROR(DeviceSample(gacts, lg, samp, bp));
    return absl::OkStatus();
  };
  ++graph_stats.padded_steps;
  absl::Status st;
  if (options.cuda_graphs == StepGraphMode::kOn && g.Has(key)) {
    st = g.Replay(key);
    ++graph_stats.replays;
    SQA_ASSIGN_OR_RETURN(lg, gacts.logits.View(*backend, {bp, vocab}, DType::kF32));
  } else if (options.cuda_graphs == StepGraphMode::kOn && graph_seen.contains(key) && !graph_failed.contains(key)) {
    st = g.BeginCapture();
    if (st.ok()) st = body();
    if (st.ok()) {
      st = g.EndCapture(key);
    } else {
      g.AbortCapture();
    }
    if (st.ok()) {
      ++graph_stats.captures;
    } else {
      ++graph_stats.capture_failures;
      graph_failed.insert(key);
      SQA_LOG(WARNING) << "decode step graph for batch " << bp << ", KV bound " << bound
                       << " could not be captured; that shape runs eagerly: " << st;
      st = body();
    }
  } else {
    graph_seen.insert(key);  // first sight: eager, sizing buffers and GEMM plans for the capture
    st = body();
  }
  SQA_RETURN_IF_ERROR(st);

  Logits out;
  out.vocab = vocab;
  out.row_begin.assign(segments.size(), 0);
  out.sampled.assign(segments.size(), SampledToken{});
  if (any_logits) {
    out.data.resize(static_cast<size_t>(n * vocab));
    SQA_RETURN_IF_ERROR(backend->CopyToHost(SubRows(lg, 0, {n, vocab}), out.data.data()));
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
      out.row_begin[static_cast<size_t>(i)] = kept;
      const Segment& s = segments[static_cast<size_t>(i)];
      if (s.sample != nullptr && !s.sample_logits) continue;
      if (kept != i) std::memmove(out.data.data() + kept * vocab, out.data.data() + i * vocab, sizeof(float) * vocab);
      ++kept;
    }
    out.data.resize(static_cast<size_t>(kept * vocab));
  }
  if (samp != nullptr) {
    SQA_ASSIGN_OR_RETURN(TensorView sv, gacts.sampled.View(*backend, {2 * bp}, DType::kI32));
    sampled_host.resize(static_cast<size_t>(2 * bp));
    SQA_RETURN_IF_ERROR(backend->CopyToHost(sv, sampled_host.data()));
    for (int64_t i = 0; i < n; ++i) {
      if (segments[static_cast<size_t>(i)].sample == nullptr) continue;
      out.sampled[static_cast<size_t>(i)].token = sampled_host[static_cast<size_t>(i)];
      std::memcpy(&out.sampled[static_cast<size_t>(i)].logprob, &sampled_host[static_cast<size_t>(bp + i)],
                  sizeof(float));
    }
  }
  SQA_RETURN_IF_ERROR(backend->Synchronize());
  return out;
}

absl::Status Engine::Impl::AllReduceRows(const TensorView& t) {
  SQA_RETURN_IF_ERROR(backend->Synchronize());  // the collective runs on its own stream
  return Collective("all-reduce",
                    Blocking([&] { return data->AllReduceSum(t.data, static_cast<size_t>(t.numel()), t.dtype); }));
}

// Decode in a sequence group: every rank attends the new queries to the keys it stores; the
// partial (o, lse) of all ranks are gathered and merged exactly through their LSE.
absl::Status Engine::Impl::DecodeAttentionGroup(int64_t layer, const TensorView& q, int64_t num_decode,
                                                const TensorView& attn) {
  Backend& be = *backend;
  const DType act = be.act_dtype();
  const int64_t dh = cfg.head_dim, ha = ha_l;
  SQA_ASSIGN_OR_RETURN(TensorView po, part_o_buf.View(be, {num_decode, ha, dh}, act));
  SQA_ASSIGN_OR_RETURN(TensorView pl, part_lse_buf.View(be, {num_decode, ha}, DType::kF32));
  SQA_ASSIGN_OR_RETURN(TensorView go, gath_o_buf.View(be, {world * num_decode, ha, dh}, act));
  SQA_ASSIGN_OR_RETURN(TensorView gl, gath_lse_buf.View(be, {world * num_decode, ha}, DType::kF32));
  DecodeAttentionArgs da;
  da.cache = kv.get();
  da.layer = layer;
  da.q = SubRows(q, 0, {num_decode, hq_l, dh});
  da.seqs = decode_refs;
  da.out = po;
  da.lse = pl.as<float>();
  SQA_RETURN_IF_ERROR(be.AttentionDecode(da));
  SQA_RETURN_IF_ERROR(be.Synchronize());
  SQA_RETURN_IF_ERROR(Collective("decode all-gather", Blocking([&] {
    absl::Status st = data->AllGather(po.data, po.nbytes(), go.data);
    return st.ok() ? data->AllGather(pl.data, pl.nbytes(), gl.data) : st;
  })));
  std::vector<TensorView> outs;
  std::vector<const float*> lses;
  for (int r = 0; r < world; ++r) {
    outs.push_back(SubRows(go, r * num_decode, {num_decode, ha, dh}));
    lses.push_back(gl.as<float>() + r * num_decode * ha);
  }
  return be.MergeAttention(outs, lses, SubRows(attn, 0, {num_decode, ha, dh}), nullptr);
}

// Prefill in a sequence group (ring attention, pass-KV). This rank holds zigzag pieces A and B of
// the prompt. The K/V of each rank's pieces travel once around the ring; at every step the rank
// attends its queries to the pieces it holds while the next pieces are already on their way
// (double buffers, the transfer on its own thread), then merges all partial results by LSE.
absl::Status Engine::Impl::RingPrefill(int64_t layer, const PrefillPiece& pc, const TensorView& q, const TensorView& k,
                                       const TensorView& v, const TensorView& attn) {
  Backend& be = *backend;
  const DType act = be.act_dtype();
  const int64_t dh = cfg.head_dim, hkv = hkv_l, ha = ha_l, bs = options.block_size;
  const int64_t n = static_cast<int64_t>(ordered[pc.seg].tokens.size());
  const ZigzagSplit z = PlanZigzag(n, world);
  int64_t max_rows = 0, max_piece = 0;
  for (int r = 0; r < world; ++r) {
    max_rows = std::max(max_rows, z.tokens_of(r, world));
    max_piece = std::max({max_piece, z.first(r).second - z.first(r).first, z.second(r, world).second - z.second(r, world).first});
  }
  const int64_t my_rows = z.tokens_of(rank, world);
  const int64_t row_elems = hkv * dh;
  // Scratch cache holding the visiting pieces: piece A from block 0, piece B from block `b_block`.
  const int64_t b_block = (max_piece + bs - 1) / bs;
  if (ring_cache == nullptr || ring_cache_blocks < 2 * b_block) {
    ring_cache.reset();
    KvCacheShape shape;
    shape.num_layers = 1;
    shape.num_blocks = 2 * b_block;
    shape.block_size = bs;
    shape.num_kv_heads = hkv;
    shape.head_dim = dh;
    SQA_ASSIGN_OR_RETURN(ring_cache, be.CreateKvCache(shape));
    ring_cache_blocks = shape.num_blocks;
    ring_table.resize(static_cast<size_t>(shape.num_blocks));
    for (int64_t i = 0; i < shape.num_blocks; ++i) ring_table[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  }
  TensorView bufk[2], bufv[2];
  for (int i = 0; i < 2; ++i) {
    SQA_ASSIGN_OR_RETURN(bufk[i], ring_k[i].View(be, {max_rows, hkv, dh}, act));
    SQA_ASSIGN_OR_RETURN(bufv[i], ring_v[i].View(be, {max_rows, hkv, dh}, act));
  }
  // Partial results: up to 2 per ring step for each of the two query pieces.
  const int64_t max_parts = 2 * world;
  SQA_ASSIGN_OR_RETURN(TensorView po, part_o_buf.View(be, {2 * max_parts * max_piece, ha, dh}, act));
  SQA_ASSIGN_OR_RETURN(TensorView pl, part_lse_buf.View(be, {2 * max_parts * max_piece, ha}, DType::kF32));
  struct QPiece {
    int64_t row0, p0, p1;  // local rows start; global positions [p0, p1)
    std::vector<TensorView> outs;
    std::vector<const float*> lses;
  };
  QPiece qp[2] = {{pc.row0, pc.a0, pc.a1, {}, {}}, {pc.row0 + (pc.a1 - pc.a0), pc.b0, pc.b1, {}, {}}};
  int64_t parts_used = 0;

  // Step 0 holds this rank's own pieces, straight from the projections.
  TensorView cur_k = SubRows(k, pc.row0, {my_rows, hkv, dh});
  TensorView cur_v = SubRows(v, pc.row0, {my_rows, hkv, dh});
  int spare = 0;
  for (int step = 0; step < world; ++step) {
    const int src = (rank - step + world) % world;
    const auto [sa0, sa1] = z.first(src);
    const auto [sb0, sb1] = z.second(src, world);
    const int64_t src_rows = (sa1 - sa0) + (sb1 - sb0);
    SQA_RETURN_IF_ERROR(be.Synchronize());  // cur_k/cur_v complete before the transfer reads them
    std::future<absl::Status> xfer;
    double xfer_seconds = 0;  // the transfer's own collective seconds, set by its thread
    TensorView next_k = bufk[spare], next_v = bufv[spare];
    if (step + 1 < world) {
      const int from = (rank + world - 1) % world, to = (rank + 1) % world;
      const int64_t in_rows = z.tokens_of((rank - step - 1 + 2 * world) % world, world);
      const size_t out_bytes = static_cast<size_t>(src_rows * row_elems) * DTypeSize(act);
      const size_t in_bytes = static_cast<size_t>(in_rows * row_elems) * DTypeSize(act);
      xfer = std::async(std::launch::async, [=, this, &xfer_seconds] {
        const double before = data->stats().send_recv.seconds;
        absl::Status s = data->SendRecv(cur_k.data, out_bytes, to, next_k.data, in_bytes, from);
        if (s.ok()) s = data->SendRecv(cur_v.data, out_bytes, to, next_v.data, in_bytes, from);
        xfer_seconds = data->stats().send_recv.seconds - before;
        return s;
      });
    }
    const auto step0 = std::chrono::steady_clock::now();
    // The visiting pieces into the scratch cache (A at block 0, B at block b_block).
    ring_slots.resize(static_cast<size_t>(src_rows));
    for (int64_t i = 0; i < sa1 - sa0; ++i) ring_slots[static_cast<size_t>(i)] = i;
    for (int64_t i = 0; i < sb1 - sb0; ++i) ring_slots[static_cast<size_t>(sa1 - sa0 + i)] = b_block * bs + i;
    absl::Status compute = absl::OkStatus();
    if (src_rows > 0) compute = be.WriteKv(*ring_cache, 0, SubRows(cur_k, 0, {src_rows, hkv, dh}),
                                           SubRows(cur_v, 0, {src_rows, hkv, dh}), ring_slots.data());
    const struct {
      int64_t p0, p1, block0;
    } kvp[2] = {{sa0, sa1, 0}, {sb0, sb1, b_block}};
    for (auto& qq : qp) {
      for (const auto& kp : kvp) {
        if (!compute.ok()) break;
        const int64_t nq = qq.p1 - qq.p0, nk = kp.p1 - kp.p0;
        if (nq == 0 || nk == 0 || kp.p0 >= qq.p1) continue;  // empty, or every key after every query
        const bool same = kp.p0 == qq.p0 && kp.p1 == qq.p1;
        if (!same && kp.p1 > qq.p0) {
          compute = absl::InternalError("zigzag pieces overlap partially");  // cannot happen
          break;
        }
        PrefillAttentionArgs pa;
        pa.cache = ring_cache.get();
        pa.layer = 0;
        pa.q = SubRows(q, qq.row0, {nq, hq_l, dh});
        pa.q_pos0 = 0;
        pa.kv = {ring_table.data() + kp.block0, nk};
        pa.causal = same;  // the diagonal piece is causal; earlier pieces are seen whole
        pa.out = SubRows(po, parts_used * max_piece, {nq, ha, dh});
        pa.lse = pl.as<float>() + parts_used * max_piece * ha;
        compute = be.AttentionPrefill(pa);
        qq.outs.push_back(pa.out);
        qq.lses.push_back(pa.lse);
        ++parts_used;
      }
    }
    // Attention done on the device: what the transfer still takes from here on is exposed. (The
    // next step synchronizes before its transfer anyway, so this costs no overlap.)
    if (compute.ok()) compute = be.Synchronize();
    const auto attn_end = std::chrono::steady_clock::now();
    timing.attention_seconds += std::chrono::duration<double>(attn_end - step0).count();
    if (xfer.valid()) {
      absl::Status s = xfer.get();  // always joined, also when the compute failed
      if (!s.ok()) return Collective("ring pass-KV", s);
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - attn_end).count();
      timing.exposed_comm_seconds += std::min(waited, xfer_seconds);
    }
    SQA_RETURN_IF_ERROR(compute);
    if (step + 1 < world) {
      cur_k = next_k;
      cur_v = next_v;
      spare ^= 1;
    }
  }
  const auto merge0 = std::chrono::steady_clock::now();
  for (auto& qq : qp) {
    const int64_t nq = qq.p1 - qq.p0;
    if (nq == 0) continue;
    SQA_RETURN_IF_ERROR(be.MergeAttention(qq.outs, qq.lses, SubRows(attn, qq.row0, {nq, ha, dh}), nullptr));
  }
  SQA_RETURN_IF_ERROR(be.Synchronize());
  timing.attention_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - merge0).count();
  return absl::OkStatus();
}

absl::StatusOr<Logits> Engine::Prefill(SeqId seq, absl::Span<const int32_t> tokens, bool all_logits) {
  if (tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("empty prompt for sequence ", seq));
  auto it = impl_->seqs.find(seq);
  if (it == impl_->seqs.end()) return absl::NotFoundError(absl::StrCat("unknown sequence ", seq));
  // Check capacity for the whole prompt up front so that a prompt that cannot fit changes nothing.
  const int64_t new_len = it->second.len + static_cast<int64_t>(tokens.size());
  const int64_t max_pos = impl_->cfg.max_position_embeddings;
  if (max_pos > 0 && new_len > max_pos) {
    return absl::InvalidArgumentError(absl::StrCat("prompt would make sequence ", seq, " ", new_len,
                                                   " tokens long; the model accepts at most ", max_pos,
                                                   " (max_position_embeddings)"));
  }
  // (Sequence groups spread the prompt over the ranks; their Forward checks every rank's room.)
  const int64_t need = impl_->pool->BlocksFor(new_len) - static_cast<int64_t>(it->second.blocks.size());
  if (!impl_->sequence_group() && need > impl_->pool->num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: need ", need, " blocks, ",
                                                     impl_->pool->num_free(), " free of ",
                                                     impl_->pool->num_blocks()));
  }
  for (int32_t t : tokens) {
    if (t < 0 || t >= impl_->cfg.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", t, " is outside the vocabulary [0, ", impl_->cfg.vocab_size, ")"));
    }
  }
  Logits result;
  result.vocab = impl_->cfg.vocab_size;
  result.row_begin = {0};
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t chunk = impl_->sequence_group() ? n : impl_->options.max_chunk_tokens;
  for (int64_t b = 0; b < n; b += chunk) {
    const int64_t e = std::min(n, b + chunk);
    Segment s;
    s.seq = seq;
    s.tokens = tokens.subspan(static_cast<size_t>(b), static_cast<size_t>(e - b));
    s.all_logits = all_logits;
    SQA_ASSIGN_OR_RETURN(Logits part, Forward(absl::MakeConstSpan(&s, 1)));
    if (all_logits) {
      result.data.insert(result.data.end(), part.data.begin(), part.data.end());
    } else if (e == n) {
      result.data = std::move(part.data);
    }
  }
  return result;
}

}  // namespace sqa
