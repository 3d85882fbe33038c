#include "workers/engine/engine.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "services/common/log.h"
#include "services/common/status.h"

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
    std::vector<int32_t> blocks;
    int64_t len = 0;
  };
  std::unordered_map<SeqId, Seq> seqs;
  SeqId next_id = 1;

  // Activation scratch, reused across calls.
  Scratch h_buf, x_buf, q_buf, k_buf, v_buf, attn_buf, tmp_buf, gate_buf, up_buf, act_buf, sel_buf, sel_norm_buf,
      logits_buf;
  // Host-side per-call arrays, reused.
  std::vector<int32_t> tokens, positions;
  std::vector<int64_t> slots, rows;
  std::vector<size_t> order;
  std::vector<KvSequenceRef> decode_refs;
  std::vector<Segment> ordered;
  std::vector<int64_t> first_row;
  std::vector<std::pair<Seq*, size_t>> undo;
  absl::flat_hash_set<SeqId> seen;

  absl::StatusOr<Logits> Forward(absl::Span<const Segment> segments);
  absl::Status RunLayers(int64_t total, int64_t num_decode, absl::Span<const Segment> segments);
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
    SQA_ASSIGN_OR_RETURN(o.q, Upload(be, lw.q_proj, p + "self_attn.q_proj.weight"));
    SQA_ASSIGN_OR_RETURN(o.k, Upload(be, lw.k_proj, p + "self_attn.k_proj.weight"));
    SQA_ASSIGN_OR_RETURN(o.v, Upload(be, lw.v_proj, p + "self_attn.v_proj.weight"));
    SQA_ASSIGN_OR_RETURN(o.o, Upload(be, lw.o_proj, p + "self_attn.o_proj.weight"));
    SQA_ASSIGN_OR_RETURN(o.post_norm, Upload(be, lw.post_norm, p + "post_attention_layernorm.weight"));
    SQA_ASSIGN_OR_RETURN(o.gate, Upload(be, lw.gate_proj, p + "mlp.gate_proj.weight"));
    SQA_ASSIGN_OR_RETURN(o.up, Upload(be, lw.up_proj, p + "mlp.up_proj.weight"));
    SQA_ASSIGN_OR_RETURN(o.down, Upload(be, lw.down_proj, p + "mlp.down_proj.weight"));
  }

  KvCacheShape shape;
  shape.num_layers = c.num_hidden_layers;
  shape.block_size = options.block_size;
  shape.num_kv_heads = c.num_key_value_heads;
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
              << " tokens on " << be.name();
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

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
  impl_->pool->Free(it->second.blocks);
  impl_->seqs.erase(it);
}

int64_t Engine::SequenceLength(SeqId seq) const {
  auto it = impl_->seqs.find(seq);
  return it == impl_->seqs.end() ? 0 : it->second.len;
}

absl::StatusOr<Logits> Engine::Forward(absl::Span<const Segment> segments) { return impl_->Forward(segments); }

absl::StatusOr<Logits> Engine::Impl::Forward(absl::Span<const Segment> segments) {
  if (segments.empty()) return absl::InvalidArgumentError("Forward: no segments");
  const int64_t vocab = cfg.vocab_size;
  const int64_t max_pos = cfg.max_position_embeddings;
  // Validate everything before touching any state.
  int64_t need_blocks = 0;
  seen.clear();
  for (const Segment& s : segments) {
    auto it = seqs.find(s.seq);
    if (it == seqs.end()) return absl::NotFoundError(absl::StrCat("unknown sequence ", s.seq));
    if (!seen.insert(s.seq).second) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.seq, " appears twice in one forward pass"));
    }
    if (s.tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("empty segment for sequence ", s.seq));
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
    need_blocks += pool->BlocksFor(new_len) - static_cast<int64_t>(it->second.blocks.size());
  }
  if (need_blocks > pool->num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: need ", need_blocks, " blocks, ",
                                                     pool->num_free(), " free of ", pool->num_blocks()));
  }
  // Take the blocks (cannot fail now); remember them to undo on a compute error.
  undo.clear();
  for (const Segment& s : segments) {
    Seq& sq = seqs[s.seq];
    const int64_t extra = pool->BlocksFor(sq.len + static_cast<int64_t>(s.tokens.size())) -
                          static_cast<int64_t>(sq.blocks.size());
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
  first_row.assign(segments.size(), 0);
  for (size_t oi = 0; oi < ordered.size(); ++oi) {
    const Segment& s = ordered[oi];
    const Seq& sq = seqs[s.seq];
    first_row[order[oi]] = static_cast<int64_t>(tokens.size());
    for (size_t j = 0; j < s.tokens.size(); ++j) {
      const int64_t pos = sq.len + static_cast<int64_t>(j);
      tokens.push_back(s.tokens[j]);
      positions.push_back(static_cast<int32_t>(pos));
      slots.push_back(static_cast<int64_t>(sq.blocks[static_cast<size_t>(pos / options.block_size)]) *
                          options.block_size +
                      pos % options.block_size);
    }
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

  absl::Status st = RunLayers(total, num_decode, ordered);
  if (!st.ok()) return fail(st);

  // Logits of the requested rows, in the caller's segment order.
  Logits out;
  out.vocab = vocab;
  rows.clear();
  out.row_begin.resize(segments.size());
  for (size_t i = 0; i < segments.size(); ++i) {
    out.row_begin[i] = static_cast<int64_t>(rows.size());
    const int64_t n = static_cast<int64_t>(segments[i].tokens.size());
    if (segments[i].all_logits) {
      for (int64_t j = 0; j < n; ++j) rows.push_back(first_row[i] + j);
    } else {
      rows.push_back(first_row[i] + n - 1);
    }
  }
  const int64_t m = static_cast<int64_t>(rows.size());
  const int64_t d = cfg.hidden_size;
  const DType act = backend->act_dtype();
  auto compute_logits = [&]() -> absl::Status {
    SQA_ASSIGN_OR_RETURN(TensorView h, h_buf.View(*backend, {total, d}, act));
    SQA_ASSIGN_OR_RETURN(TensorView sel, sel_buf.View(*backend, {m, d}, act));
    SQA_ASSIGN_OR_RETURN(TensorView seln, sel_norm_buf.View(*backend, {m, d}, act));
    SQA_ASSIGN_OR_RETURN(TensorView lg, logits_buf.View(*backend, {m, vocab}, DType::kF32));
    SQA_RETURN_IF_ERROR(backend->GatherRows(h, rows.data(), m, sel));
    SQA_RETURN_IF_ERROR(backend->RmsNorm(sel, final_norm.view, static_cast<float>(cfg.rms_norm_eps), seln));
    bool want_hidden = false;
    for (const Segment& s : segments) want_hidden = want_hidden || s.hidden_state;
    if (want_hidden) {  // Encode's OUTPUT_HIDDEN_STATE: copy seln to the host as f32
      std::vector<uint8_t> raw(static_cast<size_t>(m * d) * DTypeSize(act));
      SQA_RETURN_IF_ERROR(backend->CopyToHost(seln, raw.data()));
      SQA_RETURN_IF_ERROR(backend->Synchronize());
      out.hidden_size = d;
      out.hidden.resize(static_cast<size_t>(m * d));
      ConvertToF32(raw.data(), act, static_cast<size_t>(m * d), out.hidden.data());
    }
    SQA_RETURN_IF_ERROR(backend->Linear(seln, lm_head, lg));
    out.data.resize(static_cast<size_t>(m * vocab));
    SQA_RETURN_IF_ERROR(backend->CopyToHost(lg, out.data.data()));
    return backend->Synchronize();
  };
  st = compute_logits();
  if (!st.ok()) return fail(st);

  for (const Segment& s : segments) seqs[s.seq].len += static_cast<int64_t>(s.tokens.size());
  return out;
}

absl::Status Engine::Impl::RunLayers(int64_t total, int64_t num_decode, absl::Span<const Segment> ordered) {
  Backend& be = *backend;
  const ModelConfig& c = cfg;
  const DType act = be.act_dtype();
  const int64_t d = c.hidden_size, dh = c.head_dim, hq = c.num_query_heads, hkv = c.num_key_value_heads,
                ha = c.attn_heads(), inter = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  RopeArgs rope;
  rope.theta = c.rope_theta;
  rope.position_scale = c.rope_scaling.type == "linear" ? c.rope_scaling.factor : 1.0;

  SQA_ASSIGN_OR_RETURN(TensorView h, h_buf.View(be, {total, d}, act));
  SQA_ASSIGN_OR_RETURN(TensorView x, x_buf.View(be, {total, d}, act));
  SQA_ASSIGN_OR_RETURN(TensorView q, q_buf.View(be, {total, hq * dh}, act));
  SQA_ASSIGN_OR_RETURN(TensorView k, k_buf.View(be, {total, hkv * dh}, act));
  SQA_ASSIGN_OR_RETURN(TensorView v, v_buf.View(be, {total, hkv * dh}, act));
  SQA_ASSIGN_OR_RETURN(TensorView attn, attn_buf.View(be, {total, ha * dh}, act));
  SQA_ASSIGN_OR_RETURN(TensorView tmp, tmp_buf.View(be, {total, d}, act));
  SQA_ASSIGN_OR_RETURN(TensorView gate, gate_buf.View(be, {total, inter}, act));
  SQA_ASSIGN_OR_RETURN(TensorView up, up_buf.View(be, {total, inter}, act));
  SQA_ASSIGN_OR_RETURN(TensorView a, act_buf.View(be, {total, inter}, act));
  TensorView q3 = SubRows(q, 0, {total, hq, dh});
  TensorView k3 = SubRows(k, 0, {total, hkv, dh});
  TensorView v3 = SubRows(v, 0, {total, hkv, dh});

  // Per-segment attention arguments (block tables are stable during the pass).
  decode_refs.clear();
  for (int64_t i = 0; i < num_decode; ++i) {
    const Seq& sq = seqs[ordered[static_cast<size_t>(i)].seq];
    decode_refs.push_back({sq.blocks.data(), sq.len + 1});
  }

  SQA_RETURN_IF_ERROR(be.Embed(embed.view, tokens.data(), total, h));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerW& w = layers[static_cast<size_t>(l)];
    SQA_RETURN_IF_ERROR(be.RmsNorm(h, w.input_norm.view, eps, x));
    SQA_RETURN_IF_ERROR(be.Linear(x, w.q.view, q));
    SQA_RETURN_IF_ERROR(be.Linear(x, w.k.view, k));
    SQA_RETURN_IF_ERROR(be.Linear(x, w.v.view, v));
    SQA_RETURN_IF_ERROR(be.Rope(q3, positions.data(), rope));
    SQA_RETURN_IF_ERROR(be.Rope(k3, positions.data(), rope));
    SQA_RETURN_IF_ERROR(be.WriteKv(*kv, l, k3, v3, slots.data()));
    if (num_decode > 0) {
      DecodeAttentionArgs da;
      da.cache = kv.get();
      da.layer = l;
      da.q = SubRows(q, 0, {num_decode, hq, dh});
      da.seqs = decode_refs;
      da.out = SubRows(attn, 0, {num_decode, ha, dh});
      SQA_RETURN_IF_ERROR(be.AttentionDecode(da));
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
    SQA_RETURN_IF_ERROR(be.Linear(attn, w.o.view, tmp));
    SQA_RETURN_IF_ERROR(be.AddInPlace(h, tmp));
    SQA_RETURN_IF_ERROR(be.RmsNorm(h, w.post_norm.view, eps, x));
    SQA_RETURN_IF_ERROR(be.Linear(x, w.gate.view, gate));
    SQA_RETURN_IF_ERROR(be.Linear(x, w.up.view, up));
    SQA_RETURN_IF_ERROR(be.SwiGlu(gate, up, a));
    SQA_RETURN_IF_ERROR(be.Linear(a, w.down.view, tmp));
    SQA_RETURN_IF_ERROR(be.AddInPlace(h, tmp));
  }
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
  const int64_t need = impl_->pool->BlocksFor(new_len) - static_cast<int64_t>(it->second.blocks.size());
  if (need > impl_->pool->num_free()) {
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
  const int64_t chunk = impl_->options.max_chunk_tokens;
  const int64_t n = static_cast<int64_t>(tokens.size());
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
