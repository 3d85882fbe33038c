#include "bench/cpu/attention_bench.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench/cpu/bench_util.h"
#include "nlohmann/json.hpp"
#include "services/common/status.h"
#include "workers/engine/backend.h"

namespace sqa::bench {
namespace {

constexpr int kMaxPrefillReps = 7;
constexpr int kMinDecodeReps = 3;
constexpr int kMaxDecodeReps = 30;

// A backend tensor with its view.
struct Tensor {
  std::unique_ptr<DeviceBuffer> buf;
  TensorView view;
};

absl::StatusOr<Tensor> MakeTensor(Backend& be, std::vector<int64_t> shape) {
  Tensor t;
  SQA_ASSIGN_OR_RETURN(t.buf, be.AllocTensor(std::move(shape), &t.view, be.act_dtype()));
  return t;
}

// Fills a backend f32 tensor with random values (through the host, as the engine would).
absl::Status FillTensor(Backend& be, const TensorView& v, uint64_t seed) {
  if (v.dtype != DType::kF32) {
    return absl::UnimplementedError(absl::StrCat("sqa-bench attention needs an f32 backend; this one uses ",
                                                 std::string(DTypeName(v.dtype))));
  }
  std::vector<float> host(static_cast<size_t>(v.numel()));
  FillRandom(host.data(), host.size(), seed);
  return be.CopyFromHost(host.data(), v);
}

// OpenBLAS sgemm n^3 GFLOP/s, median of `reps` after one warm-up.
std::vector<double> MeasureSgemm(int64_t n, int reps) {
  std::vector<float> a(size_t(n * n)), b(size_t(n * n)), c(size_t(n * n));
  FillRandom(a.data(), a.size(), 1);
  FillRandom(b.data(), b.size(), 2);
  std::vector<double> gflops;
  const int ni = static_cast<int>(n);
  for (int r = 0; r <= reps; ++r) {
    double t0 = NowSeconds();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, ni, ni, 1.f, a.data(), ni, b.data(), ni, 0.f,
                c.data(), ni);
    double t = NowSeconds() - t0;
    if (r > 0) gflops.push_back(2.0 * double(n) * n * n / t / 1e9);
  }
  return gflops;
}

// The KV cache of one (layout, length) cell: `num_seqs` sequences of `tokens` random keys/values,
// sequence s in blocks [s * blocks_per_seq, (s + 1) * blocks_per_seq).
struct KvFixture {
  std::unique_ptr<KvCacheStorage> cache;
  int64_t blocks_per_seq = 0;
  std::vector<std::vector<int32_t>> tables;
};

absl::StatusOr<KvFixture> MakeKv(Backend& be, const AttnLayout& l, int64_t tokens, int64_t num_seqs,
                                 const AttentionBenchOptions& o) {
  KvFixture f;
  f.blocks_per_seq = (tokens + o.block_size - 1) / o.block_size;
  KvCacheShape shape;
  shape.num_layers = 1;
  shape.num_blocks = f.blocks_per_seq * num_seqs;
  shape.block_size = o.block_size;
  shape.num_kv_heads = l.hkv;
  shape.head_dim = o.head_dim;
  SQA_ASSIGN_OR_RETURN(f.cache, be.CreateKvCache(shape));
  const int64_t chunk = std::min<int64_t>(tokens, 2048);
  SQA_ASSIGN_OR_RETURN(Tensor k, MakeTensor(be, {chunk, l.hkv, o.head_dim}));
  SQA_ASSIGN_OR_RETURN(Tensor v, MakeTensor(be, {chunk, l.hkv, o.head_dim}));
  std::vector<int64_t> slots(static_cast<size_t>(chunk));
  for (int64_t s = 0; s < num_seqs; ++s) {
    std::vector<int32_t> table(static_cast<size_t>(f.blocks_per_seq));
    for (int64_t b = 0; b < f.blocks_per_seq; ++b) table[size_t(b)] = static_cast<int32_t>(s * f.blocks_per_seq + b);
    for (int64_t t0 = 0; t0 < tokens; t0 += chunk) {
      const int64_t n = std::min(chunk, tokens - t0);
      TensorView kv = k.view, vv = v.view;
      kv.shape[0] = n;
      vv.shape[0] = n;
      SQA_RETURN_IF_ERROR(FillTensor(be, kv, uint64_t(1000 + s * 7919 + t0)));
      SQA_RETURN_IF_ERROR(FillTensor(be, vv, uint64_t(5000000 + s * 7919 + t0)));
      for (int64_t i = 0; i < n; ++i) {
        int64_t pos = t0 + i;
        slots[size_t(i)] = int64_t(table[size_t(pos / o.block_size)]) * o.block_size + pos % o.block_size;
      }
      SQA_RETURN_IF_ERROR(be.WriteKv(*f.cache, 0, kv, vv, slots.data()));
    }
    f.tables.push_back(std::move(table));
  }
  SQA_RETURN_IF_ERROR(be.Synchronize());
  return f;
}

struct CellTiming {
  double median = 0;
  int reps = 0;
  double cpu_median = 0;
};

// One layout's prefill cell at one length: its own KV cache, queries and output, and the times
// measured so far. The cells of one length are timed round-robin (one repeat of each layout in
// turn) so that load from other processes skews every layout alike, not whichever ran during it.
class PrefillCellRunner {
 public:
  static absl::StatusOr<std::unique_ptr<PrefillCellRunner>> Make(Backend& be, const AttnLayout& l, int64_t tokens,
                                                                 const AttentionBenchOptions& o) {
    auto r = std::unique_ptr<PrefillCellRunner>(new PrefillCellRunner(be, l));
    SQA_ASSIGN_OR_RETURN(r->kv_, MakeKv(be, l, tokens, 1, o));
    SQA_ASSIGN_OR_RETURN(r->q_, MakeTensor(be, {tokens, l.hq, o.head_dim}));
    SQA_ASSIGN_OR_RETURN(r->out_, MakeTensor(be, {tokens, l.ha(), o.head_dim}));
    SQA_RETURN_IF_ERROR(FillTensor(be, r->q_.view, 42));
    SQA_RETURN_IF_ERROR(FillTensor(be, r->out_.view, 43));  // touches the pages before timing
    r->args_.cache = r->kv_.cache.get();
    r->args_.layer = 0;
    r->args_.q = r->q_.view;
    r->args_.q_pos0 = 0;
    r->args_.kv = KvSequenceRef{r->kv_.tables[0].data(), tokens};
    r->args_.causal = true;
    r->args_.out = r->out_.view;
    return r;
  }
  // Returns the wall time; records wall and CPU time when `record`.
  absl::StatusOr<double> Run(bool record = true) {
    double c0 = ProcessCpuSeconds();
    double t0 = NowSeconds();
    SQA_RETURN_IF_ERROR(be_.AttentionPrefill(args_));
    SQA_RETURN_IF_ERROR(be_.Synchronize());
    double t = NowSeconds() - t0;
    if (record) {
      times.push_back(t);
      cpu_times.push_back(ProcessCpuSeconds() - c0);
    }
    return t;
  }
  const AttnLayout& layout() const { return layout_; }
  std::vector<double> times, cpu_times;
  int target_reps = 1;

 private:
  PrefillCellRunner(Backend& be, const AttnLayout& l) : be_(be), layout_(l) {}
  Backend& be_;
  AttnLayout layout_;
  KvFixture kv_;
  Tensor q_, out_;
  PrefillAttentionArgs args_;
};

// Times every layout's prefill at `tokens`. `predicted` holds each layout's expected seconds
// (scaled from the previous length; 0 when unknown): short runs get a warm-up first.
absl::StatusOr<std::vector<CellTiming>> TimePrefillRoundRobin(Backend& be, const std::vector<AttnLayout>& layouts,
                                                              int64_t tokens, const AttentionBenchOptions& o,
                                                              const std::vector<double>& predicted) {
  std::vector<std::unique_ptr<PrefillCellRunner>> cells;
  for (const AttnLayout& l : layouts) {
    SQA_ASSIGN_OR_RETURN(auto c, PrefillCellRunner::Make(be, l, tokens, o));
    cells.push_back(std::move(c));
  }
  for (size_t i = 0; i < cells.size(); ++i) {
    // Warm-up (thread pool, caches, instruction cache) unless a run is long enough that it
    // does not matter (a smaller length of the same layout ran just before).
    if (predicted[i] < 1.0) SQA_RETURN_IF_ERROR(cells[i]->Run(/*record=*/false).status());
  }
  for (auto& c : cells) {
    SQA_ASSIGN_OR_RETURN(double first, c->Run());
    c->target_reps = o.quick ? 1 : std::clamp(static_cast<int>(o.prefill_cell_budget_s / first), 1, kMaxPrefillReps);
  }
  for (bool more = true; more;) {
    more = false;
    for (auto& c : cells) {
      if (static_cast<int>(c->times.size()) >= c->target_reps) continue;
      SQA_RETURN_IF_ERROR(c->Run().status());
      more = true;
    }
  }
  std::vector<CellTiming> out;
  for (auto& c : cells) {
    out.push_back(CellTiming{Median(c->times), static_cast<int>(c->times.size()), Median(c->cpu_times)});
  }
  return out;
}

absl::StatusOr<CellTiming> TimeDecode(Backend& be, const AttnLayout& l, int64_t tokens, int64_t batch,
                                      const KvFixture& kv, const AttentionBenchOptions& o, CacheFlusher* flusher) {
  SQA_ASSIGN_OR_RETURN(Tensor q, MakeTensor(be, {batch, l.hq, o.head_dim}));
  SQA_ASSIGN_OR_RETURN(Tensor out, MakeTensor(be, {batch, l.ha(), o.head_dim}));
  SQA_RETURN_IF_ERROR(FillTensor(be, q.view, 77));
  DecodeAttentionArgs args;
  args.cache = kv.cache.get();
  args.layer = 0;
  args.q = q.view;
  args.out = out.view;
  for (int64_t b = 0; b < batch; ++b) args.seqs.push_back(KvSequenceRef{kv.tables[size_t(b)].data(), tokens});
  SQA_RETURN_IF_ERROR(be.AttentionDecode(args));  // warm-up
  SQA_RETURN_IF_ERROR(be.Synchronize());
  std::vector<double> times;
  double spent = 0;
  const int max_reps = o.quick ? 1 : kMaxDecodeReps;
  const int min_reps = o.quick ? 1 : kMinDecodeReps;
  while (static_cast<int>(times.size()) < max_reps &&
         (static_cast<int>(times.size()) < min_reps || spent < o.decode_cell_budget_s)) {
    if (flusher) flusher->Flush();
    double t0 = NowSeconds();
    SQA_RETURN_IF_ERROR(be.AttentionDecode(args));
    SQA_RETURN_IF_ERROR(be.Synchronize());
    double t = NowSeconds() - t0;
    times.push_back(t);
    spent += t;
  }
  return CellTiming{Median(times), static_cast<int>(times.size())};
}

double CausalGflop(const AttnLayout& l, int64_t n, int64_t dh) {
  // QK^T and PV, 2 FLOPs per multiply-add, half of the N x N score matrix under the causal mask.
  return 2.0 * 2.0 * double(l.ha()) * double(n) * double(n) * double(dh) / 2.0 / 1e9;
}

std::string RenderMarkdown(const AttentionBenchResult& r, const MachineInfo& m) {
  const AttentionBenchOptions& o = r.options;
  std::string s = "## CPU attention (`sqa-bench attention`)\n\n";
  absl::StrAppend(&s, MachineMarkdown(m, o.command, o.threads));
  absl::StrAppend(&s, "- shape: baseline H = ", o.heads, " heads of ", o.head_dim, ", f32, KV block ", o.block_size,
                  " tokens; prefill = causal attention of N queries over their own N keys in the paged cache\n");
  absl::StrAppend(&s, Fmt("- OpenBLAS sgemm %lld^3 in the same run: **%.1f GFLOP/s** (median of %zu)\n",
                          static_cast<long long>(o.sgemm_size), r.sgemm_gflops, r.sgemm_samples.size()));
  absl::StrAppend(&s, Fmt("- total benchmark time %.0f s\n\n", r.total_seconds));

  // Index cells by (layout, N).
  std::map<std::pair<std::string, int64_t>, const PrefillCell*> pre;
  for (const auto& c : r.prefill) pre[{c.layout, c.tokens}] = &c;
  std::vector<std::string> layout_order;
  for (const auto& c : r.prefill) {
    if (std::find(layout_order.begin(), layout_order.end(), c.layout) == layout_order.end()) {
      layout_order.push_back(c.layout);
    }
  }

  // Speed-up tables: by wall time (what a user waits) and by process CPU time (what the kernel
  // costs; unlike wall time it does not stretch when other processes share the cores).
  int half_sgemm = 0;
  for (const auto& c : r.prefill) half_sgemm += c.ratio_to_sgemm >= 0.5 ? 1 : 0;
  auto speed_table = [&](bool cpu, int* met, int* total) {
    std::vector<std::string> hdr = {"layout", "Hq/Hkv", "target"};
    for (int64_t n : o.lengths) hdr.push_back(absl::StrCat("N=", n));
    MdTable t(hdr);
    for (const std::string& name : layout_order) {
      std::vector<std::string> row = {name, "?", "?"};
      for (int64_t n : o.lengths) {
        auto it = pre.find({name, n});
        if (it == pre.end()) {
          row.push_back("-");
          continue;
        }
        const PrefillCell& c = *it->second;
        row[1] = absl::StrCat(c.hq, "/", c.hkv);
        row[2] = Fmt("%.2fx", c.target_speedup);
        const double sp = cpu ? c.cpu_speedup_vs_mha : c.speedup_vs_mha;
        const bool ok = cpu ? c.cpu_target_met : c.target_met;
        ++*total;
        if (ok) ++*met;
        std::string cell = Fmt("%.2fx", sp);
        if (sp > 0 && !ok) cell = "**" + cell + "**";
        row.push_back(absl::StrCat(cell, " (", cpu ? FmtTime(c.cpu_seconds) + " CPU" : FmtTime(c.seconds), ")"));
      }
      t.AddRow(row);
    }
    return t.Render();
  };
  int met = 0, total = 0, cpu_met = 0, cpu_total = 0;
  absl::StrAppend(&s, "### Causal prefill attention: speed-up over MHA by wall time (median time)\n\n");
  absl::StrAppend(&s, "Target: speed-up >= 0.85 x H / max(Hq, Hkv); **bold** = target missed.\n\n");
  absl::StrAppend(&s, speed_table(false, &met, &total), "\n");
  absl::StrAppend(&s, "### Causal prefill attention: speed-up over MHA by process CPU time (median CPU time of a run, all threads)\n\n");
  absl::StrAppend(&s, "CPU time counts the work done, not the waiting when other processes share the cores.\n\n");
  absl::StrAppend(&s, speed_table(true, &cpu_met, &cpu_total), "\n");
  absl::StrAppend(&s, Fmt("Speed-up target met in %d of %d cells by wall time, %d of %d by CPU time; attention >= 50%% "
                          "of sgemm in %d of %d cells.\n\n",
                          met, total, cpu_met, cpu_total, half_sgemm, total));

  absl::StrAppend(&s, "### Causal prefill attention: GFLOP/s (share of sgemm), FLOPs = 2*2*max(Hq,Hkv)*N^2*dh/2\n\n");
  std::vector<std::string> hdr = {"layout", "Hq/Hkv"};
  for (int64_t n : o.lengths) hdr.push_back(absl::StrCat("N=", n));
  MdTable gf(hdr);
  for (const std::string& name : layout_order) {
    std::vector<std::string> row = {name, ""};
    for (int64_t n : o.lengths) {
      auto it = pre.find({name, n});
      if (it == pre.end()) {
        row.push_back("-");
        continue;
      }
      row[1] = absl::StrCat(it->second->hq, "/", it->second->hkv);
      row.push_back(Fmt("%.1f (%.0f%%)", it->second->gflops, 100.0 * it->second->ratio_to_sgemm));
    }
    gf.AddRow(row);
  }
  absl::StrAppend(&s, gf.Render(), "\n");

  absl::StrAppend(&s, "### Decode attention: one query per sequence over N cached keys (time, GB/s of K+V read)\n\n");
  if (o.flush_decode) absl::StrAppend(&s, "The last-level cache is flushed before each timed call.\n\n");
  hdr = {"layout", "Hq/Hkv", "batch"};
  for (int64_t n : o.lengths) hdr.push_back(absl::StrCat("N=", n));
  MdTable dec(hdr);
  std::map<std::tuple<std::string, int64_t, int64_t>, const DecodeCell*> dmap;
  for (const auto& c : r.decode) dmap[{c.layout, c.batch, c.tokens}] = &c;
  for (const std::string& name : layout_order) {
    for (int64_t b : o.decode_batches) {
      std::vector<std::string> row = {name, "", absl::StrCat(b)};
      bool anyc = false;
      for (int64_t n : o.lengths) {
        auto it = dmap.find({name, b, n});
        if (it == dmap.end()) {
          row.push_back("-");
          continue;
        }
        anyc = true;
        row[1] = absl::StrCat(it->second->hq, "/", it->second->hkv);
        row.push_back(absl::StrCat(FmtTime(it->second->seconds), ", ", Fmt("%.1f", it->second->gbps)));
      }
      if (anyc) dec.AddRow(row);
    }
  }
  absl::StrAppend(&s, dec.Render());
  return s;
}

std::string RenderJson(const AttentionBenchResult& r, const MachineInfo& m) {
  const AttentionBenchOptions& o = r.options;
  nlohmann::json j;
  j["benchmark"] = "attention";
  j["date_utc"] = m.date_utc;
  j["machine"] = {{"cpu_model", m.cpu_model}, {"logical_cpus", m.logical_cpus}, {"load_average", m.load_average},
                  {"blas_config", m.blas_config}};
  j["command"] = o.command;
  j["options"] = {{"lengths", o.lengths},   {"decode_batches", o.decode_batches}, {"heads", o.heads},
                  {"head_dim", o.head_dim}, {"block_size", o.block_size},         {"threads", o.threads},
                  {"quick", o.quick},       {"flush_decode", o.flush_decode}};
  j["sgemm"] = {{"size", o.sgemm_size}, {"gflops_median", r.sgemm_gflops}, {"gflops_samples", r.sgemm_samples}};
  j["prefill"] = nlohmann::json::array();
  for (const auto& c : r.prefill) {
    j["prefill"].push_back({{"layout", c.layout},
                            {"hq", c.hq},
                            {"hkv", c.hkv},
                            {"tokens", c.tokens},
                            {"reps", c.reps},
                            {"seconds", c.seconds},
                            {"gflop", c.gflop},
                            {"gflops", c.gflops},
                            {"cpu_seconds", c.cpu_seconds},
                            {"speedup_vs_mha", c.speedup_vs_mha},
                            {"cpu_speedup_vs_mha", c.cpu_speedup_vs_mha},
                            {"target_speedup", c.target_speedup},
                            {"target_met", c.target_met},
                            {"cpu_target_met", c.cpu_target_met},
                            {"ratio_to_sgemm", c.ratio_to_sgemm}});
  }
  j["decode"] = nlohmann::json::array();
  for (const auto& c : r.decode) {
    j["decode"].push_back({{"layout", c.layout},
                           {"hq", c.hq},
                           {"hkv", c.hkv},
                           {"tokens", c.tokens},
                           {"batch", c.batch},
                           {"reps", c.reps},
                           {"seconds", c.seconds},
                           {"kv_bytes", c.kv_bytes},
                           {"gbps", c.gbps}});
  }
  j["total_seconds"] = r.total_seconds;
  return j.dump(2) + "\n";
}

}  // namespace

absl::StatusOr<std::vector<AttnLayout>> LayoutsForBaseline(int64_t h) {
  if (h < 4 || h % 4 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--heads must be a positive multiple of 4 (GQA and xSQA use H/4), got ", h));
  }
  return std::vector<AttnLayout>{
      {"MHA", h, h},          {"GQA", h, h / 4},      {"MQA", h, 1},          {"SQA", h / 2, h / 4},
      {"sSQA", h / 2, h / 2}, {"xSQA", h / 4, h / 4}, {"xSMQA", h / 4, 1},    {"rSQA", h / 4, h / 2},
  };
}

absl::StatusOr<AttentionBenchOptions> ParseAttentionOptions(const std::vector<std::string>& argv,
                                                           std::string* json_path, std::string* md_path) {
  SQA_ASSIGN_OR_RETURN(Args a, Args::Parse(argv,
                                           {"lengths", "heads", "head-dim", "threads", "json", "md", "layouts",
                                            "decode-batches", "block-size", "cell-budget", "sgemm-size"},
                                           {"quick", "no-flush"}));
  AttentionBenchOptions o;
  o.quick = a.Has("quick") && a.Get("quick", "") != "false" && a.Get("quick", "") != "0";
  if (o.quick) {
    o.lengths = {128, 256};
    o.decode_batches = {1, 2};
    o.sgemm_size = 256;
    o.flush_decode = false;
    o.prefill_cell_budget_s = 0;
    o.decode_cell_budget_s = 0;
  }
  SQA_ASSIGN_OR_RETURN(o.lengths, a.GetIntList("lengths", o.lengths));
  SQA_ASSIGN_OR_RETURN(o.decode_batches, a.GetIntList("decode-batches", o.decode_batches));
  SQA_ASSIGN_OR_RETURN(o.heads, a.GetInt("heads", o.heads));
  SQA_ASSIGN_OR_RETURN(o.head_dim, a.GetInt("head-dim", o.head_dim));
  SQA_ASSIGN_OR_RETURN(o.block_size, a.GetInt("block-size", o.block_size));
  SQA_ASSIGN_OR_RETURN(int64_t threads, a.GetInt("threads", 0));
  SQA_ASSIGN_OR_RETURN(o.prefill_cell_budget_s, a.GetDouble("cell-budget", o.prefill_cell_budget_s));
  SQA_ASSIGN_OR_RETURN(o.sgemm_size, a.GetInt("sgemm-size", o.sgemm_size));
  o.threads = static_cast<int>(threads);
  o.layouts = a.GetList("layouts", {});
  if (a.Has("no-flush")) o.flush_decode = false;
  if (o.head_dim <= 0 || o.head_dim > 1024) return absl::InvalidArgumentError("--head-dim must be in 1..1024");
  if (o.block_size <= 0) return absl::InvalidArgumentError("--block-size must be positive");
  if (threads < 0 || threads > 1024) return absl::InvalidArgumentError("--threads must be in 0..1024");
  if (o.sgemm_size <= 0 || o.sgemm_size > 16384) return absl::InvalidArgumentError("--sgemm-size must be in 1..16384");
  if (o.prefill_cell_budget_s < 0) return absl::InvalidArgumentError("--cell-budget must be >= 0");
  std::sort(o.lengths.begin(), o.lengths.end());
  o.lengths.erase(std::unique(o.lengths.begin(), o.lengths.end()), o.lengths.end());
  SQA_ASSIGN_OR_RETURN(auto all, LayoutsForBaseline(o.heads));
  for (const std::string& name : o.layouts) {
    bool found = std::any_of(all.begin(), all.end(), [&](const AttnLayout& l) { return l.name == name; });
    if (!found) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown layout '", name, "' in --layouts; known: MHA,GQA,MQA,SQA,sSQA,xSQA,xSMQA,rSQA"));
    }
  }
  *json_path = a.Get("json", "");
  *md_path = a.Get("md", "");
  return o;
}

absl::StatusOr<AttentionBenchResult> RunAttentionBench(const AttentionBenchOptions& options) {
  AttentionBenchResult r;
  r.options = options;
  const AttentionBenchOptions& o = r.options;
  const double t_start = NowSeconds();
  MachineInfo machine = DescribeMachine();

  BackendOptions bo;
  bo.device = DeviceKind::kCpu;
  bo.num_threads = o.threads;
  SQA_ASSIGN_OR_RETURN(std::unique_ptr<Backend> be, CreateBackend(bo));

  r.sgemm_samples = MeasureSgemm(o.sgemm_size, o.quick ? 1 : 5);
  r.sgemm_gflops = Median(r.sgemm_samples);
  std::cerr << Fmt("sgemm %lld^3: %.1f GFLOP/s\n", static_cast<long long>(o.sgemm_size), r.sgemm_gflops);

  SQA_ASSIGN_OR_RETURN(std::vector<AttnLayout> layouts, LayoutsForBaseline(o.heads));
  if (!o.layouts.empty()) {
    std::vector<AttnLayout> keep;
    for (const auto& l : layouts) {
      if (std::find(o.layouts.begin(), o.layouts.end(), l.name) != o.layouts.end()) keep.push_back(l);
    }
    layouts = keep;
  }
  std::unique_ptr<CacheFlusher> flusher;
  if (o.flush_decode) flusher = std::make_unique<CacheFlusher>();
  const int64_t max_batch = *std::max_element(o.decode_batches.begin(), o.decode_batches.end());

  std::map<std::string, std::pair<int64_t, double>> last;  // layout -> (N, seconds) measured before
  for (int64_t n : o.lengths) {
    std::vector<double> predicted;
    for (const AttnLayout& l : layouts) {
      double p = 0;
      if (auto it = last.find(l.name); it != last.end()) {
        double ratio = double(n) / double(it->second.first);
        p = it->second.second * ratio * ratio;
      }
      predicted.push_back(p);
    }
    SQA_ASSIGN_OR_RETURN(std::vector<CellTiming> timings, TimePrefillRoundRobin(*be, layouts, n, o, predicted));
    for (size_t i = 0; i < layouts.size(); ++i) {
      const AttnLayout& l = layouts[i];
      const CellTiming& t = timings[i];
      last[l.name] = {n, t.median};
      PrefillCell c;
      c.layout = l.name;
      c.hq = l.hq;
      c.hkv = l.hkv;
      c.tokens = n;
      c.reps = t.reps;
      c.seconds = t.median;
      c.cpu_seconds = t.cpu_median;
      c.gflop = CausalGflop(l, n, o.head_dim);
      c.gflops = c.gflop / c.seconds;
      c.ratio_to_sgemm = r.sgemm_gflops > 0 ? c.gflops / r.sgemm_gflops : 0;
      c.target_speedup = 0.85 * double(o.heads) / double(l.ha());
      r.prefill.push_back(c);
      std::cerr << Fmt("prefill %-5s N=%-6lld %9.2f ms  %6.1f GFLOP/s  (%d reps)\n", l.name.c_str(),
                       static_cast<long long>(n), c.seconds * 1e3, c.gflops, c.reps);
    }
    for (const AttnLayout& l : layouts) {
      SQA_ASSIGN_OR_RETURN(KvFixture kv, MakeKv(*be, l, n, max_batch, o));
      for (int64_t b : o.decode_batches) {
        SQA_ASSIGN_OR_RETURN(CellTiming d, TimeDecode(*be, l, n, b, kv, o, flusher.get()));
        DecodeCell dc;
        dc.layout = l.name;
        dc.hq = l.hq;
        dc.hkv = l.hkv;
        dc.tokens = n;
        dc.batch = b;
        dc.reps = d.reps;
        dc.seconds = d.median;
        dc.kv_bytes = double(kv.cache->bytes_per_block()) / double(o.block_size) * double(n) * double(b);
        dc.gbps = dc.kv_bytes / dc.seconds / 1e9;
        r.decode.push_back(dc);
        std::cerr << Fmt("decode  %-5s N=%-6lld b=%-2lld %8.3f ms  %6.1f GB/s\n", l.name.c_str(),
                         static_cast<long long>(n), static_cast<long long>(b), dc.seconds * 1e3, dc.gbps);
      }
    }
  }
  // Speed-ups need every layout's time at a length, so they are filled in at the end.
  for (PrefillCell& c : r.prefill) {
    auto mha = std::find_if(r.prefill.begin(), r.prefill.end(),
                            [&](const PrefillCell& m) { return m.layout == "MHA" && m.tokens == c.tokens; });
    if (mha != r.prefill.end() && c.seconds > 0) {
      c.speedup_vs_mha = mha->seconds / c.seconds;
      c.target_met = c.speedup_vs_mha >= c.target_speedup;
    }
    if (mha != r.prefill.end() && c.cpu_seconds > 0) {
      c.cpu_speedup_vs_mha = mha->cpu_seconds / c.cpu_seconds;
      c.cpu_target_met = c.cpu_speedup_vs_mha >= c.target_speedup;
    }
  }
  r.total_seconds = NowSeconds() - t_start;
  r.markdown = RenderMarkdown(r, machine);
  r.json = RenderJson(r, machine);
  return r;
}

int AttentionMain(const std::vector<std::string>& args, const std::string& command) {
  std::string json_path, md_path;
  absl::StatusOr<AttentionBenchOptions> o = ParseAttentionOptions(args, &json_path, &md_path);
  if (!o.ok()) {
    std::cerr << "sqa-bench attention: " << o.status().message() << "\n";
    return 2;
  }
  o->command = command;
  absl::StatusOr<AttentionBenchResult> r = RunAttentionBench(*o);
  if (!r.ok()) {
    std::cerr << "sqa-bench attention: " << r.status() << "\n";
    return 1;
  }
  std::cout << r->markdown << std::flush;
  if (!md_path.empty()) {
    if (absl::Status s = WriteFile(md_path, r->markdown); !s.ok()) {
      std::cerr << "sqa-bench attention: " << s.message() << "\n";
      return 1;
    }
  }
  if (!json_path.empty()) {
    if (absl::Status s = WriteFile(json_path, r->json); !s.ok()) {
      std::cerr << "sqa-bench attention: " << s.message() << "\n";
      return 1;
    }
  }
  return 0;
}

}  // namespace sqa::bench
