#include "bench/gpu/group/group_run.h"

#include <algorithm>
#include <map>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "workers/engine/sampling.h"
#include "workers/engine/shard/plan.h"

namespace sqa::bench {
namespace {

// A Backend that forwards every call except the prefill attention, which it cuts to one query
// over one key: the memory a prefill allocates (weights, KV cache, activations, staging) is the
// real one, its quadratic compute is gone. Outputs are garbage; only success matters.
class ProbeBackend : public Backend {
 public:
  explicit ProbeBackend(std::unique_ptr<Backend> inner) : in_(std::move(inner)) {}
  std::string name() const override { return in_->name() + "+probe"; }
  DType act_dtype() const override { return in_->act_dtype(); }
  absl::StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) override { return in_->Allocate(bytes); }
  absl::Status CopyToHost(const TensorView& src, void* dst) override { return in_->CopyToHost(src, dst); }
  absl::Status CopyFromHost(const void* src, const TensorView& dst) override { return in_->CopyFromHost(src, dst); }
  absl::Status Synchronize() override { return in_->Synchronize(); }
  absl::StatusOr<BackendWeight> UploadWeight(const TensorView& host) override { return in_->UploadWeight(host); }
  absl::Status Embed(const TensorView& table, const int32_t* tokens, int64_t n, const TensorView& out) override {
    return in_->Embed(table, tokens, n, out);
  }
  absl::Status RmsNorm(const TensorView& x, const TensorView& w, float eps, const TensorView& out) override {
    return in_->RmsNorm(x, w, eps, out);
  }
  absl::Status Linear(const TensorView& x, const TensorView& w, const TensorView& out) override {
    return in_->Linear(x, w, out);
  }
  absl::Status AddInPlace(const TensorView& x, const TensorView& y) override { return in_->AddInPlace(x, y); }
  absl::Status Rope(const TensorView& x, const int32_t* positions, const RopeArgs& rope) override {
    return in_->Rope(x, positions, rope);
  }
  absl::Status SwiGlu(const TensorView& gate, const TensorView& up, const TensorView& out) override {
    return in_->SwiGlu(gate, up, out);
  }
  absl::Status GatherRows(const TensorView& x, const int64_t* rows, int64_t m, const TensorView& out) override {
    return in_->GatherRows(x, rows, m, out);
  }
  absl::StatusOr<std::unique_ptr<KvCacheStorage>> CreateKvCache(const KvCacheShape& shape) override {
    return in_->CreateKvCache(shape);
  }
  absl::Status WriteKv(KvCacheStorage& cache, int64_t layer, const TensorView& k, const TensorView& v,
                       const int64_t* slots) override {
    return in_->WriteKv(cache, layer, k, v, slots);
  }
  absl::Status AttentionPrefill(const PrefillAttentionArgs& a) override {
    if (a.q.shape.size() != 3 || a.out.shape.size() != 3 || a.q.dim(0) == 0) return in_->AttentionPrefill(a);
    PrefillAttentionArgs one = a;
    one.q.shape[0] = 1;
    one.out.shape[0] = 1;
    one.q_pos0 = 0;
    one.kv.kv_len = 1;
    one.causal = true;
    return in_->AttentionPrefill(one);
  }
  absl::Status AttentionDecode(const DecodeAttentionArgs& a) override { return in_->AttentionDecode(a); }
  absl::Status MergeAttention(absl::Span<const TensorView> outs, absl::Span<const float* const> lses,
                              const TensorView& out, float* lse_out) override {
    return in_->MergeAttention(outs, lses, out, lse_out);
  }

 private:
  std::unique_ptr<Backend> in_;
};

struct CommTotals {
  double seconds = 0, bytes = 0;
};
CommTotals Totals(const std::vector<const Communicator*>& comms) {
  CommTotals t;
  for (const Communicator* c : comms) {
    const CollectiveStats& s = c->stats();
    for (const CollectiveStats::Entry* e : {&s.broadcast, &s.all_reduce, &s.all_gather, &s.send_recv}) {
      t.seconds += e->seconds;
      t.bytes += static_cast<double>(e->bytes);
    }
  }
  return t;
}

}  // namespace

double RunReport::attention_balance() const {
  double mx = 0, sum = 0;
  for (const RankReport& r : ranks) {
    mx = std::max(mx, r.timings.attention_seconds);
    sum += r.timings.attention_seconds;
  }
  return sum > 0 ? mx / (sum / static_cast<double>(ranks.size())) : 0;
}

int64_t KvTokensPerRank(ShardMode mode, int world, int64_t n) {
  if (mode != ShardMode::kSequence || world <= 1 || n <= 1) return n;
  const ZigzagSplit z = PlanZigzag(n, world);
  int64_t m = 0;
  for (int r = 0; r < world; ++r) m = std::max(m, z.tokens_of(r, world));
  return m;
}

absl::StatusOr<int64_t> KvBytesPerRank(const ModelConfig& c, ShardMode mode, int rank, int world, int64_t block_size,
                                       int64_t tokens, DType act) {
  int64_t hkv = c.num_key_value_heads;
  if (mode == ShardMode::kHeads && world > 1) {
    absl::StatusOr<HeadShard> hs = PlanHeadShard(c, rank, world);
    if (!hs.ok()) return hs.status();
    hkv = hs->hkv_local;
  }
  const int64_t blocks = (tokens + block_size - 1) / block_size;
  return blocks * 2 * block_size * hkv * c.head_dim * static_cast<int64_t>(DTypeSize(act)) * c.num_hidden_layers;
}

std::vector<int32_t> BenchPrompt(int64_t n, int64_t vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    t[static_cast<size_t>(i)] =
        static_cast<int32_t>(UniformFromSeed(11, static_cast<uint64_t>(i)) * static_cast<double>(vocab));
  }
  return t;
}

RunReport RunPrefill(const GroupSpec& spec, const std::vector<int32_t>& prompt, int64_t warmup) {
  const int world = std::max(1, spec.world);
  const int64_t n = static_cast<int64_t>(prompt.size());
  warmup = std::min(warmup, n);
  RunReport report;
  report.ranks.resize(static_cast<size_t>(world));
  std::vector<absl::Status> rank_status(static_cast<size_t>(world));
  InProcessStore store;
  // Warm-up steps, which followers skip before they start measuring: one pass in sequence mode,
  // chunks of max_chunk_tokens otherwise.
  const int64_t chunk = std::max<int64_t>(1, spec.engine.max_chunk_tokens);
  const int64_t warm_steps =
      warmup == 0 ? 0 : (spec.mode == ShardMode::kSequence && world > 1 ? 1 : (warmup + chunk - 1) / chunk);

  auto rank_main = [&](int r) -> absl::Status {
    RankReport& rep = report.ranks[static_cast<size_t>(r)];
    rep.rank = r;
    std::unique_ptr<Communicator> control, data;
    std::vector<const Communicator*> comms;
    if (world > 1) {
      GlooOptions go;
      go.rank = r;
      go.world_size = world;
      go.timeout = spec.timeout;
      go.prefix = spec.prefix;
      absl::StatusOr<std::unique_ptr<Communicator>> c = CreateGlooCommunicator(go, store);
      if (!c.ok()) return c.status();
      control = std::move(c).value();
      comms.push_back(control.get());
      if (spec.make_data) {
        absl::StatusOr<std::unique_ptr<Communicator>> d = spec.make_data(r, world, store, spec.prefix, spec.timeout);
        if (!d.ok()) return d.status();
        data = std::move(d).value();
        comms.push_back(data.get());
      }
    }
    BackendOptions bo = spec.backend;
    bo.gpu_index = spec.backend.gpu_index + r;
    absl::StatusOr<std::unique_ptr<Backend>> be = CreateBackend(bo);
    absl::Status made = be.status();
    EngineOptions eo = spec.engine;
    std::unique_ptr<Engine> engine;
    if (made.ok()) {
      std::unique_ptr<Backend> backend = std::move(be).value();
      if (spec.probe) backend = std::make_unique<ProbeBackend>(std::move(backend));
      if (spec.kv_for_tokens > 0) {
        absl::StatusOr<int64_t> kv = KvBytesPerRank(spec.model->config(), spec.mode, r, world, eo.block_size,
                                                    KvTokensPerRank(spec.mode, world, spec.kv_for_tokens),
                                                    backend->act_dtype());
        made = kv.status();
        if (kv.ok()) {
          eo.num_kv_blocks = 0;
          eo.kv_cache_bytes = spec.max_kv_bytes > 0 ? std::min(*kv, spec.max_kv_bytes) : *kv;
        }
      }
      eo.group.mode = world > 1 ? spec.mode : ShardMode::kNone;
      eo.group.control = control.get();
      eo.group.data = data.get();
      eo.group.time_attention = true;
      rep.kv_cache_bytes = eo.kv_cache_bytes;
      if (made.ok()) {
        absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(spec.model, std::move(backend), eo);
        made = e.status();
        if (e.ok()) engine = std::move(e).value();
      }
    }
    // Every rank learns whether every engine was made before any step is sent (a rank that could
    // not make its engine, e.g. out of memory for its KV cache, would leave the others waiting).
    if (world > 1) {
      float failed = made.ok() ? 0.f : 1.f;
      absl::Status agreed = control->AllReduceSum(&failed, 1, DType::kF32);
      if (!agreed.ok()) return agreed;
      if (made.ok() && failed > 0) made = absl::AbortedError("another rank could not make its engine");
    }
    if (!made.ok()) return made;

    GroupTimings t0;
    CommTotals c0;
    absl::Status st;
    if (r == 0) {
      if (warmup > 0) {
        const SeqId w = engine->NewSequence();
        const std::vector<int32_t> warm(prompt.begin(), prompt.begin() + warmup);
        absl::StatusOr<Logits> l = engine->Prefill(w, warm, false);
        engine->Release(w);
        if (!l.ok() && !engine->group_ok()) st = l.status();
      }
      t0 = engine->group_timings();
      c0 = Totals(comms);
      if (st.ok()) {
        const SeqId s = engine->NewSequence();
        const auto start = std::chrono::steady_clock::now();
        absl::StatusOr<Logits> l = engine->Prefill(s, prompt, false);
        report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (l.ok()) report.logits = std::move(l->data);
        st = l.status();
        engine->Release(s);
      }
      absl::Status stopped = engine->StopGroup();
      if (st.ok()) st = stopped;
    } else {
      t0 = engine->group_timings();
      c0 = Totals(comms);
      int64_t steps = 0;
      st = engine->ServeFollower([&](double) {
        if (++steps == warm_steps) {
          t0 = engine->group_timings();
          c0 = Totals(comms);
        }
      });
    }
    rep.timings = engine->group_timings() - t0;
    const CommTotals c1 = Totals(comms);
    rep.comm_seconds = c1.seconds - c0.seconds;
    rep.comm_bytes = c1.bytes - c0.bytes;
    return st;
  };

  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      rank_status[static_cast<size_t>(r)] = rank_main(r);
      if (spec.after_rank) spec.after_rank(r);
    });
  }
  for (auto& t : threads) t.join();
  report.status = rank_status[0];
  for (int r = 1; r < world && report.status.ok(); ++r) {
    const absl::Status& s = rank_status[static_cast<size_t>(r)];
    if (!s.ok()) report.status = absl::Status(s.code(), absl::StrCat("rank ", r, ": ", s.message()));
  }
  return report;
}

absl::StatusOr<LongestPrompt> FindLongestPrompt(int64_t step, int64_t max_tokens,
                                                const std::function<absl::Status(int64_t tokens)>& fits) {
  if (step <= 0 || max_tokens < step) {
    return absl::InvalidArgumentError(absl::StrCat("need 0 < step <= max tokens (step ", step, ", max ", max_tokens, ")"));
  }
  LongestPrompt out;
  std::map<int64_t, bool> known;  // in multiples of step
  auto probe = [&](int64_t k) -> absl::StatusOr<bool> {
    if (auto it = known.find(k); it != known.end()) return it->second;
    Probe p;
    p.tokens = k * step;
    const auto t0 = std::chrono::steady_clock::now();
    p.status = fits(p.tokens);
    p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out.probes.push_back(p);
    const absl::StatusCode code = p.status.code();
    if (!p.status.ok() && code != absl::StatusCode::kResourceExhausted && code != absl::StatusCode::kInvalidArgument) {
      return absl::Status(code, absl::StrCat("prefill of ", p.tokens, " tokens: ", p.status.message()));
    }
    if (!p.status.ok() && (out.first_failing == 0 || p.tokens < out.first_failing)) {
      out.first_failing = p.tokens;
      out.failure = p.status;
    }
    known[k] = p.status.ok();
    return p.status.ok();
  };
  const int64_t kmax = max_tokens / step;
  int64_t good = 0, bad = kmax + 1;  // largest k known to fit, smallest known not to
  for (int64_t k = 1;; k = std::min(kmax, 2 * k)) {
    absl::StatusOr<bool> ok = probe(k);
    if (!ok.ok()) return ok.status();
    if (!*ok) {
      bad = k;
      break;
    }
    good = k;
    if (k == kmax) break;
  }
  while (bad - good > 1) {
    const int64_t mid = good + (bad - good) / 2;
    absl::StatusOr<bool> ok = probe(mid);
    if (!ok.ok()) return ok.status();
    (*ok ? good : bad) = mid;
  }
  out.longest = good * step;
  return out;
}

absl::Status ProbePrefill(const GroupSpec& spec, int64_t n) {
  GroupSpec s = spec;
  s.probe = true;
  s.kv_for_tokens = n;
  s.prefix = absl::StrCat(spec.prefix, "-probe", n);
  if (s.model->config().max_position_embeddings > 0 && n > s.model->config().max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt of ", n, " tokens is longer than the model's ",
                                                   s.model->config().max_position_embeddings,
                                                   " positions (max_position_embeddings)"));
  }
  return RunPrefill(s, BenchPrompt(n, s.model->config().vocab_size), 0).status;
}

}  // namespace sqa::bench
