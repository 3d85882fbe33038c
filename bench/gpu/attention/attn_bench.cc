// sqa-attn-bench: times the CUDA attention kernels (workers/engine/cuda/attention.h) on one GPU.
//   prefill: causal, one sequence of N tokens, every layout of REFERENCE.md (H=32, dh 128), K/V
//            contiguous [N, Hkv, dh] and paged (block_size 64, shuffled block table);
//   decode:  batch B of sequences of C tokens each over the paged cache, bytes of K+V read / time.
// Timing: CUDA events around each launch, warm-up first, median of the repeats; prefill kernels
// listed together are timed round-robin (one launch of each per round), after --sustain-ms
// (default 1500) of sustained load by the same launches. Inputs are random
// (a hash kernel), never zeros. Output: a table on stdout and JSON (--json FILE).
//
// Usage: sqa-attn-bench [--json out.json] [--prefill 8192,32768,...] [--decode-ctx 32768,...]
//                       [--decode-batch 1,8,...] [--layouts MHA,GQA,...] [--no-paged] [--quick]
//                       [--kernels wgmma,cpasync,pingpong,lockstep,mma]   (prefill kernels to time,
//                        side by side; wgmma-hgN / wgmma-hgall = the wgmma kernel with CTAs numbered
//                        N / all KV heads at a time; cpasync = the wgmma kernel with its cp.async
//                        producer instead of TMA)
//                       [--paged-first] (paged variant before contiguous)
//                       [--paged-table shuffled|identity] (the paged variant's block order)
//                       [--paged-block B] (its block size, default 64; -1 = one block of N keys)
//                       [--sustain-ms MS] (prefill: sustained load before each row, default 1500)
//                       [--decode-kernels v6,v5]  (decode kernels to time, side by side: v10, v8, v6, v5, v5w, v4, v3)
//                       [--decode-splits 0,16,...]  (split counts to force; 0 = automatic)
//                       [--read-floor-max-gb G]  (decode: time a read-only kernel over the same
//                        bytes for calls up to G GB, default 1; 0 = off)
//                       [--read-floor-ctas 8,4,...]  (its CTAs per SM, one row each, default 8: each
//                        CTA keeps 32 KB of loads in flight; the first value fills the tables' column)
//                       [--read-floor-paged]  (also time the read-only kernel through the shuffled
//                        block tables, each CTA a contiguous run of entries: the decode pattern)
//                       [--decode-fuse-min-keys 0,128,...]  (v5: keys a split needs for the merge in
//                        the split kernel, one row per value; 0 = the built-in 512)
//                       [--decode-early-tiles 0,3]  (v5+: K/V tiles per stream read before the wait
//                        on the launch before, DecodeParams::early_tiles; 0 = the kernel's default)
//                       [--decode-combine-trigger 0,1,2]  (when the merge kernel lets the next launch
//                        start, DecodeParams::combine_trigger: 0 after the split kernel, 1 at its
//                        entry, 2 once it has its partials; -1, the default: the kernel's choice)
//                       [--decode-combine-sliced 0,1]  (1: the merge kernel a CTA per 32 columns,
//                        0: a CTA per head, DecodeParams::combine_sliced; -1, the default: the
//                        kernel's choice)
//                       [--decode-timeline]  (v5: also replay the graph once with the CTAs stamping
//                        the phases of each launch, DecodeParams::timeline; prints when they begin
//                        and end, as percentiles over CTAs, and writes them to the JSON)
// Decode timing: a CUDA graph of 32 launches, each over its own copy of the cache (so that K/V
// comes from DRAM, not L2), replayed; the per-launch time of a lone launch timed with events
// (host launch cost included) is reported beside it.
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "nlohmann/json.hpp"
#include "bench/gpu/attention/read_floor.h"
#include "workers/engine/cuda/attention.h"

namespace {

#define CK(x)                                                                                          \
  do {                                                                                                 \
    cudaError_t e_ = (x);                                                                              \
    if (e_ != cudaSuccess) {                                                                           \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, \
                   cudaGetErrorString(e_));                                                            \
      std::exit(1);                                                                                    \
    }                                                                                                  \
  } while (0)

struct Layout {
  std::string name;
  int hq, hkv;
};
const std::vector<Layout> kAllLayouts = {{"MHA", 32, 32}, {"GQA", 32, 8},  {"MQA", 32, 1},   {"SQA", 16, 8},
                                         {"sSQA", 16, 16}, {"xSQA", 8, 8}, {"xSMQA", 8, 1}, {"rSQA", 8, 16}};

std::vector<int64_t> ParseList(const std::string& s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    if (!tok.empty()) v.push_back(std::stoll(tok));
  }
  return v;
}

void Fill(void* p, size_t bytes, uint64_t seed) {
  // Random bf16 in about [-2, 2): fill with host-made pattern chunk, copied repeatedly.
  // (A host chunk of 64 MiB with distinct values, replicated; enough to keep data non-trivial.)
  static std::vector<uint16_t> chunk;
  if (chunk.empty()) {
    chunk.resize(32u << 20);
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (auto& x : chunk) {
      float f = nd(rng);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      x = static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
    }
  }
  const size_t cb = chunk.size() * 2;
  const size_t rot = (seed * 7919) % (chunk.size() / 2) * 2;  // different offset per buffer
  char* dst = static_cast<char*>(p);
  size_t done = 0;
  // first piece from a rotated offset so that different buffers differ
  size_t first = std::min(bytes, cb - rot);
  CK(cudaMemcpy(dst, reinterpret_cast<const char*>(chunk.data()) + rot, first, cudaMemcpyHostToDevice));
  done = first;
  while (done < bytes) {
    const size_t n = std::min(done, bytes - done);  // doubling device-to-device copies
    CK(cudaMemcpy(dst + done, dst, n, cudaMemcpyDeviceToDevice));
    done += n;
  }
}

// Median per launcher when they are timed round-robin (warm-up of each, then rep i of every
// launcher before rep i + 1 of any), so that clock and temperature drift over the run and the
// position in the list weigh on each of them alike.
// sustain_ms: before the warm-up, the launchers run round-robin for this long (wall clock), so
// that the row is timed at the clock the GPU holds under sustained load. The H200 draws ~700 W
// on these kernels and its power limiter lowers the SM clock about one second into a load;
// without this, short rows (and whichever kernel runs first after an idle gap) are timed at the
// higher boost clock.
std::vector<double> MedianMsRoundRobin(const std::vector<std::function<void()>>& launches, int warmup, int reps,
                                       cudaStream_t s, double sustain_ms = 0) {
  if (sustain_ms > 0) {
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() < sustain_ms) {
      for (const auto& f : launches) f();
      CK(cudaStreamSynchronize(s));
    }
  }
  for (const auto& f : launches)
    for (int i = 0; i < warmup; ++i) f();
  CK(cudaStreamSynchronize(s));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<std::vector<double>> t(launches.size());
  for (int i = 0; i < reps; ++i) {
    for (size_t k = 0; k < launches.size(); ++k) {
      CK(cudaEventRecord(a, s));
      launches[k]();
      CK(cudaEventRecord(b, s));
      CK(cudaEventSynchronize(b));
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, a, b));
      t[k].push_back(ms);
    }
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::vector<double> med;
  for (auto& v : t) {
    std::sort(v.begin(), v.end());
    med.push_back(v[v.size() / 2]);
  }
  return med;
}

// Median of one launcher's repeats after its warm-up.
double MedianMs(std::function<void()> launch, int warmup, int reps, cudaStream_t s) {
  return MedianMsRoundRobin({std::move(launch)}, warmup, reps, s)[0];
}

void Check(const absl::Status& st) {
  if (!st.ok()) {
    std::fprintf(stderr, "launch failed: %s\n", st.ToString().c_str());
    std::exit(1);
  }
}

// --decode-timeline: replays a graph of kLaunches launches of p (over the cache copies in turn),
// each stamping its CTAs' phases (DecodeParams::timeline) into its own slice, and reports the
// phases of launches 8.. (past the graph's start) relative to each launch's first CTA entry.
void TimelineRow(sqa::cuda::DecodeParams p, cudaStream_t s, int splits, int copies, int64_t nb, int32_t* tables,
                 const std::string& layout, int64_t ctx, int64_t batch, const std::string& kernel,
                 nlohmann::json& out) {
  using namespace sqa::cuda;
  constexpr int kLaunches = 32, kFirst = 8;
  const int64_t ctas = static_cast<int64_t>(splits) * p.batch * std::max(p.num_q_heads, p.num_kv_heads);
  const int64_t per = ctas * kDecodeTimelineSlots;
  // The merge kernel's CTAs (when it runs): at most batch x heads x head_dim / 32.
  const int64_t cctas = static_cast<int64_t>(p.batch) * std::max(p.num_q_heads, p.num_kv_heads) * (p.head_dim / 32);
  const int64_t cper = cctas * kDecodeTimelineSlots;
  uint64_t* buf;
  uint64_t* cbuf;
  CK(cudaMalloc(&buf, kLaunches * per * sizeof(uint64_t)));
  CK(cudaMemset(buf, 0, kLaunches * per * sizeof(uint64_t)));
  CK(cudaMalloc(&cbuf, kLaunches * cper * sizeof(uint64_t)));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kLaunches; ++i) {
    p.block_tables = tables + (i % copies) * nb;
    p.timeline = buf + i * per;
    p.combine_timeline = cbuf + i * cper;
    Check(LaunchAttentionDecode(p, s));
  }
  CK(cudaStreamEndCapture(s, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  CK(cudaGraphLaunch(exec, s));  // warm
  CK(cudaMemsetAsync(buf, 0, kLaunches * per * sizeof(uint64_t), s));
  CK(cudaMemsetAsync(cbuf, 0, kLaunches * cper * sizeof(uint64_t), s));
  CK(cudaGraphLaunch(exec, s));
  CK(cudaStreamSynchronize(s));
  std::vector<uint64_t> h(kLaunches * per), ch(kLaunches * cper);
  CK(cudaMemcpy(h.data(), buf, h.size() * sizeof(uint64_t), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(ch.data(), cbuf, ch.size() * sizeof(uint64_t), cudaMemcpyDeviceToHost));
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  CK(cudaFree(buf));
  CK(cudaFree(cbuf));
  // Per launch: min / median / max over CTAs of each time slot (us after the first entry).
  constexpr int kTimes = 9;  // the time slots, in the order they are printed
  const int slot[kTimes] = {kTlEntry, kTlWaited,      kTlFirstTile,     kTlLoopEnd, kTlStored,
                            kTlMerge, kTlMergeLoaded, kTlMergeCombined, kTlExit};
  const char* names[kTimes] = {"entry", "waited", "first_tile", "loop_end", "stored",
                               "merge", "merge_loaded", "merge_combined", "exit"};
  std::vector<std::array<std::vector<double>, 3>> stat(kTimes);
  // The merge kernel's stamps (min / median / max over its CTAs), and the next launch's median
  // release from its wait: the launch-to-launch critical path.
  constexpr int kCTimes = 4;
  const int cslot[kCTimes] = {kTlEntry, kTlWaited, kTlMergeLoaded, kTlExit};
  const char* cnames[kCTimes] = {"entry", "waited", "loaded", "exit"};
  std::vector<std::array<std::vector<double>, 3>> cstat(kCTimes);
  std::vector<double> gaps, spans, next_waited;
  nlohmann::json raw = nlohmann::json::array();
  for (int l = kFirst; l < kLaunches; ++l) {
    const uint64_t* t = h.data() + l * per;
    uint64_t t0 = UINT64_MAX, tmax = 0;
    for (int64_t c = 0; c < ctas; ++c) {
      if (t[c * kDecodeTimelineSlots + kTlEntry] != 0) t0 = std::min(t0, t[c * kDecodeTimelineSlots + kTlEntry]);
      tmax = std::max(tmax, t[c * kDecodeTimelineSlots + kTlExit]);
    }
    if (t0 == UINT64_MAX) continue;
    spans.push_back((tmax - t0) * 1e-3);
    if (l + 1 < kLaunches) {
      const uint64_t* tn = h.data() + (l + 1) * per;
      uint64_t n0 = UINT64_MAX;
      for (int64_t c = 0; c < ctas; ++c)
        if (tn[c * kDecodeTimelineSlots + kTlEntry] != 0) n0 = std::min(n0, tn[c * kDecodeTimelineSlots + kTlEntry]);
      if (n0 != UINT64_MAX) gaps.push_back((static_cast<double>(n0) - static_cast<double>(tmax)) * 1e-3);
      std::vector<double> w;
      for (int64_t c = 0; c < ctas; ++c)
        if (tn[c * kDecodeTimelineSlots + kTlEntry] != 0)
          w.push_back((static_cast<double>(tn[c * kDecodeTimelineSlots + kTlWaited]) - static_cast<double>(t0)) * 1e-3);
      if (!w.empty()) {
        std::sort(w.begin(), w.end());
        next_waited.push_back(w[w.size() / 2]);
      }
    }
    const uint64_t* ct = ch.data() + l * cper;
    for (int k = 0; k < kCTimes; ++k) {
      std::vector<double> v;
      for (int64_t c = 0; c < cctas; ++c) {
        const uint64_t x = ct[c * kDecodeTimelineSlots + cslot[k]];
        if (x != 0 && ct[c * kDecodeTimelineSlots + kTlEntry] != 0) v.push_back((static_cast<double>(x) - static_cast<double>(t0)) * 1e-3);
      }
      if (v.empty()) continue;
      std::sort(v.begin(), v.end());
      cstat[k][0].push_back(v.front());
      cstat[k][1].push_back(v[v.size() / 2]);
      cstat[k][2].push_back(v.back());
    }
    for (int k = 0; k < kTimes; ++k) {
      std::vector<double> v;
      for (int64_t c = 0; c < ctas; ++c) {
        const uint64_t x = t[c * kDecodeTimelineSlots + slot[k]];
        if (x != 0 && t[c * kDecodeTimelineSlots + kTlEntry] != 0) v.push_back((static_cast<double>(x) - static_cast<double>(t0)) * 1e-3);
      }
      if (v.empty()) continue;
      std::sort(v.begin(), v.end());
      stat[k][0].push_back(v.front());
      stat[k][1].push_back(v[v.size() / 2]);
      stat[k][2].push_back(v.back());
    }
    if (l == kLaunches / 2) {
      for (int64_t c = 0; c < ctas; ++c) {
        const uint64_t* e = t + c * kDecodeTimelineSlots;
        if (e[kTlEntry] == 0) continue;
        nlohmann::json row = nlohmann::json::array();
        for (int k = 0; k < kTimes; ++k) {
          const uint64_t x = e[slot[k]];
          row.push_back(x == 0 ? -1.0 : (static_cast<double>(x) - static_cast<double>(t0)) * 1e-3);
        }
        row.push_back(e[kTlSm]);
        raw.push_back(row);
      }
    }
  }
  auto med = [](std::vector<double> v) {
    if (v.empty()) return std::nan("");
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  nlohmann::json phases;
  std::printf("  timeline %s %s ctx %lld b %lld, %d splits (us after the first CTA entry, min/median/max over CTAs,\n"
              "  median over launches %d-%d):",
              layout.c_str(), kernel.c_str(), (long long)ctx, (long long)batch, splits, kFirst, kLaunches - 1);
  for (int k = 0; k < kTimes; ++k) {
    if (stat[k][0].empty()) continue;
    const double a = med(stat[k][0]), b = med(stat[k][1]), c = med(stat[k][2]);
    std::printf(" %s %.2f/%.2f/%.2f", names[k], a, b, c);
    phases[names[k]] = {a, b, c};
  }
  nlohmann::json cphases;
  if (!cstat[0][0].empty()) {
    std::printf("\n  merge kernel:");
    for (int k = 0; k < kCTimes; ++k) {
      if (cstat[k][0].empty()) continue;
      const double a = med(cstat[k][0]), b = med(cstat[k][1]), c = med(cstat[k][2]);
      std::printf(" %s %.2f/%.2f/%.2f", cnames[k], a, b, c);
      cphases[cnames[k]] = {a, b, c};
    }
  }
  std::printf(" | span %.2f, next launch's first entry %+.2f, next launch released at %.2f\n", med(spans), med(gaps),
              med(next_waited));
  out["decode_timeline"].push_back({{"layout", layout}, {"ctx", ctx}, {"batch", batch}, {"kernel", kernel},
                                    {"splits", splits}, {"fuse_min_split_keys", p.fuse_min_split_keys},
                                    {"phases_us_min_med_max", phases}, {"span_us", med(spans)},
                                    {"next_entry_after_exit_us", med(gaps)},
                                    {"next_waited_us", med(next_waited)}, {"merge_kernel_us_min_med_max", cphases},
                                    {"early_tiles", p.early_tiles}, {"combine_trigger", p.combine_trigger},
                                    {"combine_sliced", p.combine_sliced},
                                    {"launch_16_ctas", raw},
                                    {"launch_16_columns", {"entry", "waited", "first_tile", "loop_end", "stored", "merge",
                                                           "merge_loaded", "merge_combined", "exit", "sm"}}});
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  std::vector<int64_t> prefill_n = {8192, 32768, 131072, 200000};
  std::vector<int64_t> decode_ctx = {32768, 131072, 524288, 1048576};
  std::vector<int64_t> decode_batch = {1, 8, 32, 64};
  std::vector<std::string> layout_filter;
  std::vector<std::string> decode_layouts = {"MHA", "GQA", "MQA", "SQA", "xSQA"};
  bool paged = true;
  bool paged_first = false;   // time the paged variant before the contiguous one
  bool shuffle_table = true;  // paged: shuffled block table (false: identity)
  int paged_block = 64;       // prefill's paged block size; -1 = one block per sequence (bs = N)
  std::vector<std::string> kernels = {"wgmma", "lockstep", "mma"};
  double decode_max_gb = 40.0;
  double read_floor_max_gb = 1.0;  // decode rows: time the read-only floor for calls up to this size
  std::vector<int> read_floor_ctas = {8};  // its CTAs per SM, one row each
  bool read_floor_paged = false;           // also through the block tables
  std::vector<std::string> decode_kernels = {"v6", "v5"};
  std::vector<int64_t> decode_splits = {0};  // 0 = the launcher's choice
  std::vector<int64_t> decode_fuse_min = {0};  // 0 = the launcher's choice
  std::vector<int64_t> decode_early_tiles = {0};
  std::vector<int64_t> decode_combine_trigger = {-1};  // -1: the kernel's default
  std::vector<int64_t> decode_combine_sliced = {-1};
  bool decode_timeline = false;
  double sustain_ms = 1500;                  // prefill rows: sustained load before timing (0: off)
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--json") json_path = next();
    else if (a == "--prefill") prefill_n = ParseList(next());
    else if (a == "--decode-ctx") decode_ctx = ParseList(next());
    else if (a == "--decode-batch") decode_batch = ParseList(next());
    else if (a == "--decode-max-gb") decode_max_gb = std::stod(next());
    else if (a == "--read-floor-max-gb") read_floor_max_gb = std::stod(next());
    else if (a == "--read-floor-ctas") {
      read_floor_ctas.clear();
      std::stringstream ss(next());
      std::string t;
      while (std::getline(ss, t, ',')) {
        const int c = std::stoi(t);
        if (c < 1 || c > 8) {
          std::fprintf(stderr, "--read-floor-ctas takes CTAs per SM from 1 to 8, not %s\n", t.c_str());
          return 2;
        }
        read_floor_ctas.push_back(c);
      }
      if (read_floor_ctas.empty()) {
        std::fprintf(stderr, "--read-floor-ctas needs at least one value\n");
        return 2;
      }
    }
    else if (a == "--decode-splits") decode_splits = ParseList(next());
    else if (a == "--decode-fuse-min-keys") decode_fuse_min = ParseList(next());
    else if (a == "--decode-early-tiles") decode_early_tiles = ParseList(next());
    else if (a == "--decode-combine-trigger") decode_combine_trigger = ParseList(next());
    else if (a == "--decode-combine-sliced") decode_combine_sliced = ParseList(next());
    else if (a == "--decode-timeline") decode_timeline = true;
    else if (a == "--read-floor-paged") read_floor_paged = true;
    else if (a == "--no-paged") paged = false;
    else if (a == "--sustain-ms") sustain_ms = std::stod(next());
    else if (a == "--paged-first") paged_first = true;
    else if (a == "--paged-block") paged_block = std::stoi(next());
    else if (a == "--paged-table") {
      const std::string t = next();
      if (t != "shuffled" && t != "identity") {
        std::fprintf(stderr, "--paged-table takes shuffled or identity, not %s\n", t.c_str());
        return 2;
      }
      shuffle_table = t == "shuffled";
    }
    else if (a == "--decode-kernels") {
      decode_kernels.clear();
      std::stringstream ss(next());
      std::string t;
      while (std::getline(ss, t, ',')) {
        if (t != "v10" && t != "v8" && t != "v6" && t != "v5" && t != "v5w" && t != "v4" && t != "v3") {
          std::fprintf(stderr, "--decode-kernels takes v10, v8, v6, v5, v5w, v4 and v3, not %s\n", t.c_str());
          return 2;
        }
        decode_kernels.push_back(t);
      }
    }
    else if (a == "--kernels") {
      kernels.clear();
      std::stringstream ss(next());
      std::string t;
      while (std::getline(ss, t, ',')) {
        if (t != "wgmma" && t.rfind("wgmma-hg", 0) != 0 && t != "lockstep" && t != "mma" && t != "pingpong" &&
            t != "cpasync") {
          std::fprintf(stderr,
                       "--kernels takes wgmma, wgmma-hgN, wgmma-hgall, pingpong, lockstep, mma and/or cpasync, not %s\n",
                       t.c_str());
          return 2;
        }
        kernels.push_back(t);
      }
    }
    else if (a == "--layouts") {
      std::stringstream ss(next());
      std::string t;
      while (std::getline(ss, t, ',')) layout_filter.push_back(t);
    } else if (a == "--quick") {
      prefill_n = {4096};
      decode_ctx = {32768};
      decode_batch = {1, 8};
    } else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::fprintf(stderr, "sqa-attn-bench: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  nlohmann::json out;
  out["gpu"] = prop.name;
  out["sms"] = prop.multiProcessorCount;
  out["sustain_ms"] = sustain_ms;
  out["prefill"] = nlohmann::json::array();
  out["decode"] = nlohmann::json::array();
  out["decode_read_floor"] = nlohmann::json::array();
  out["decode_timeline"] = nlohmann::json::array();
  const int dh = 128;
  // Rewritten after every measurement so that a run cut short still leaves its numbers.
  auto save = [&] {
    if (json_path.empty()) return;
    std::ofstream f(json_path);
    f << out.dump(1) << "\n";
  };
  auto wanted = [&](const std::string& name) {
    return layout_filter.empty() || std::find(layout_filter.begin(), layout_filter.end(), name) != layout_filter.end();
  };

  std::printf("%-6s %8s %-10s %-6s %10s %9s\n", "layout", "N", "variant", "kernel", "ms", "TFLOP/s");
  for (int64_t n : prefill_n) {
    for (const Layout& L : kAllLayouts) {
      if (!wanted(L.name)) continue;
      const int ha = std::max(L.hq, L.hkv);
      const size_t qb = size_t(n) * L.hq * dh * 2, kvb = size_t(n) * L.hkv * dh * 2, ob = size_t(n) * ha * dh * 2;
      void *q, *k, *v, *o;
      float* lse;
      CK(cudaMalloc(&q, qb));
      CK(cudaMalloc(&k, kvb));
      CK(cudaMalloc(&v, kvb));
      CK(cudaMalloc(&o, ob));
      CK(cudaMalloc(&lse, size_t(n) * ha * 4));
      Fill(q, qb, 1);
      Fill(k, kvb, 2);
      Fill(v, kvb, 3);
      const double flops = 4.0 * ha * double(n) * double(n) * dh / 2.0;
      const int warm = n <= 32768 ? 3 : 1, reps = n <= 32768 ? 10 : 3;
      for (int vi = 0; vi < (paged ? 2 : 1); ++vi) {
        const int variant = paged && paged_first ? 1 - vi : vi;
        const int bs = paged_block > 0 ? paged_block : static_cast<int>(n);
        int32_t* table = nullptr;
        void *pk = k, *pv = v;
        if (variant == 1) {
          // Paged copy of the same K/V: token-major blocks [bs][Hkv][dh] in shuffled order. Random content.
          const int64_t nb = (n + bs - 1) / bs;
          std::vector<int32_t> t(nb);
          std::iota(t.begin(), t.end(), 0);
          if (shuffle_table) std::shuffle(t.begin(), t.end(), std::mt19937(5));
          CK(cudaMalloc(&table, nb * 4));
          CK(cudaMemcpy(table, t.data(), nb * 4, cudaMemcpyHostToDevice));
          const size_t pb = size_t(nb) * bs * L.hkv * dh * 2;
          CK(cudaMalloc(&pk, pb));
          CK(cudaMalloc(&pv, pb));
          Fill(pk, pb, 4);
          Fill(pv, pb, 5);
        }
        sqa::cuda::PrefillParams p;
        p.q = q;
        p.n = n;
        p.q_pos0 = 0;
        p.kv.k = pk;
        p.kv.v = pv;
        p.kv.block_table = table;
        p.kv.block_size = bs;
        p.kv.num_blocks = table != nullptr ? (n + bs - 1) / bs : 0;
        p.kv_len = n;
        p.num_q_heads = L.hq;
        p.num_kv_heads = L.hkv;
        p.head_dim = dh;
        p.causal = true;
        p.out = o;
        p.lse = lse;
        std::vector<std::function<void()>> launches;
        for (const std::string& kname : kernels) {
          p.kernel = kname == "mma"        ? sqa::cuda::PrefillKernel::kMmaSync
                     : kname == "lockstep" ? sqa::cuda::PrefillKernel::kWgmmaLockstep
                     : kname == "pingpong" ? sqa::cuda::PrefillKernel::kWgmmaPingPong
                     : kname == "cpasync"  ? sqa::cuda::PrefillKernel::kWgmmaCpAsync
                                           : sqa::cuda::PrefillKernel::kWgmma;
          // wgmma-hgN: CTAs numbered N KV heads at a time (hg1: v11's order; hgall: v10's).
          p.cta_head_group = kname.rfind("wgmma-hg", 0) != 0 ? 0
                             : kname == "wgmma-hgall"        ? L.hkv
                                                             : std::max(1, std::atoi(kname.c_str() + 8));
          launches.push_back([&s, p] { Check(sqa::cuda::LaunchAttentionPrefill(p, s)); });
        }
        const std::vector<double> med = MedianMsRoundRobin(launches, warm, reps, s, sustain_ms);
        CK(cudaGetLastError());
        for (size_t ki = 0; ki < kernels.size(); ++ki) {
          const std::string& kname = kernels[ki];
          const double ms = med[ki];
          const double tf = flops / (ms * 1e-3) / 1e12;
          const std::string vname = variant == 0 ? "contiguous"
                                    : paged_block == 64 ? (shuffle_table ? "paged64" : "paged64-identity")
                                                        : "paged-bs" + std::to_string(bs);
          std::printf("%-6s %8lld %-10s %-6s %10.3f %9.1f\n", L.name.c_str(), (long long)n, vname.c_str(), kname.c_str(), ms,
                      tf);
          std::fflush(stdout);
          out["prefill"].push_back({{"layout", L.name}, {"hq", L.hq}, {"hkv", L.hkv}, {"n", n}, {"head_dim", dh},
                                    {"variant", vname}, {"kernel", kname}, {"ms", ms}, {"tflops", tf}, {"reps", reps}});
          save();
        }
        if (variant == 1) {
          CK(cudaFree(table));
          CK(cudaFree(pk));
          CK(cudaFree(pv));
        }
      }
      CK(cudaFree(q));
      CK(cudaFree(k));
      CK(cudaFree(v));
      CK(cudaFree(o));
      CK(cudaFree(lse));
    }
  }

  // Decode: one pool big enough for the largest combination under decode_max_gb.
  std::printf("\n%-6s %8s %5s %-7s %7s %10s %10s %9s %7s\n", "layout", "ctx", "batch", "kernel", "splits", "us",
              "us(1 call)", "GB/s", "%ceil");
  const double ceiling = 4.08e12;
  const int bs = 64;
  for (const std::string& lname : decode_layouts) {
    auto it = std::find_if(kAllLayouts.begin(), kAllLayouts.end(), [&](const Layout& l) { return l.name == lname; });
    if (it == kAllLayouts.end() || !wanted(lname)) continue;
    const Layout L = *it;
    const int ha = std::max(L.hq, L.hkv);
    const size_t block_bytes = size_t(bs) * L.hkv * dh * 2;  // K or V
    for (int64_t ctx : decode_ctx) {
      for (int64_t batch : decode_batch) {
        const double kv_bytes = 2.0 * double(block_bytes) * double(ctx / bs) * double(batch);
        if (kv_bytes > decode_max_gb * 1e9) continue;
        const int64_t per_seq = (ctx + bs - 1) / bs;
        const int64_t nb = per_seq * batch;
        // Copies of the cache (own blocks, own table) so that successive launches read K/V that
        // is not in L2 (50 MB), as in a decode step where every layer has its own cache.
        const int copies = static_cast<int>(std::clamp<double>(std::ceil(512e6 / kv_bytes), 1.0, 32.0));
        void *pk, *pv, *q, *o, *ws = nullptr;
        int32_t *tables, *lens;
        CK(cudaMalloc(&pk, nb * copies * block_bytes));
        CK(cudaMalloc(&pv, nb * copies * block_bytes));
        Fill(pk, nb * copies * block_bytes, 6);
        Fill(pv, nb * copies * block_bytes, 7);
        std::vector<int32_t> t(nb * copies);
        std::iota(t.begin(), t.end(), 0);
        std::shuffle(t.begin(), t.end(), std::mt19937(9));
        CK(cudaMalloc(&tables, nb * copies * 4));
        CK(cudaMemcpy(tables, t.data(), nb * copies * 4, cudaMemcpyHostToDevice));
        std::vector<int32_t> l(batch, static_cast<int32_t>(ctx));
        CK(cudaMalloc(&lens, batch * 4));
        CK(cudaMemcpy(lens, l.data(), batch * 4, cudaMemcpyHostToDevice));
        CK(cudaMalloc(&q, batch * L.hq * dh * 2));
        Fill(q, batch * L.hq * dh * 2, 8);
        CK(cudaMalloc(&o, batch * ha * dh * 2));
        // The read-only floor at this size (calls of up to read_floor_max_gb): one copy's K and V
        // bytes read by a kernel that does nothing else, in the same graph of launches over the
        // copies: what reading that much in one launch costs at this size, with no compute.
        double floor_ms = 0;
        for (const int floor_ctas : read_floor_ctas) {
          if (kv_bytes > read_floor_max_gb * 1e9) break;
          const size_t half = static_cast<size_t>(nb) * block_bytes;
          unsigned* sink;
          CK(cudaMalloc(&sink, sizeof(unsigned)));
          constexpr int kFloorLaunches = 32;
          cudaGraph_t graph;
          cudaGraphExec_t exec;
          // Contiguous (each copy's K and V as flat arrays), then with --read-floor-paged the same
          // bytes through the shuffled block tables, as the decode kernels read them.
          for (int paged_floor = 0; paged_floor <= (read_floor_paged ? 1 : 0); ++paged_floor) {
          CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
          for (int i = 0; i < kFloorLaunches; ++i) {
            if (paged_floor) {
              CK(sqa::bench::LaunchReadFloorPaged(pk, pv, tables + (i % copies) * nb, nb, block_bytes, sink,
                                                  prop.multiProcessorCount, floor_ctas, s));
            } else {
              CK(sqa::bench::LaunchReadFloor(static_cast<char*>(pk) + (i % copies) * half,
                                             static_cast<char*>(pv) + (i % copies) * half, half, sink,
                                             prop.multiProcessorCount, floor_ctas, s));
            }
          }
          CK(cudaStreamEndCapture(s, &graph));
          CK(cudaGraphInstantiate(&exec, graph, 0));
          const double ms = MedianMs([&] { CK(cudaGraphLaunch(exec, s)); }, 2, 7, s) / kFloorLaunches;
          CK(cudaGraphExecDestroy(exec));
          CK(cudaGraphDestroy(graph));
          if (floor_ms == 0) floor_ms = ms;
          const double fbw = kv_bytes / (ms * 1e-3);
          const std::string name =
              std::string(paged_floor ? "paged" : "read") + (floor_ctas == 8 ? "" : "/" + std::to_string(floor_ctas));
          std::printf("%-6s %8lld %5lld %-7s %7s %10.1f %10s %9.1f %6.1f%%\n", L.name.c_str(), (long long)ctx,
                      (long long)batch, name.c_str(), "-", ms * 1e3, "-", fbw / 1e9, 100.0 * fbw / ceiling);
          out["decode_read_floor"].push_back({{"layout", L.name}, {"ctx", ctx}, {"batch", batch}, {"ms", ms},
                                              {"ctas_per_sm", floor_ctas}, {"kv_bytes", kv_bytes},
                                              {"paged", paged_floor != 0}, {"bytes_per_s", fbw}});
          }
          CK(cudaFree(sink));
        }
        for (const std::string& dname : decode_kernels)
        for (int64_t want_splits : decode_splits)
        for (int64_t fuse_min : decode_fuse_min)
        for (int64_t early_tiles : decode_early_tiles)
        for (int64_t comb_trig : decode_combine_trigger)
        for (int64_t comb_sliced : decode_combine_sliced) {
          const bool v5up = dname == "v10" || dname == "v8" || dname == "v6" || dname == "v5";
          if ((fuse_min != decode_fuse_min.front() || early_tiles != decode_early_tiles.front() ||
               comb_trig != decode_combine_trigger.front() || comb_sliced != decode_combine_sliced.front()) &&
              !v5up && dname != "v5w") {
            continue;
          }
          // v5 reads its first K/V tiles before waiting on the launch before it, as in a decode step
          // (fresh_kv_tokens = 1: the step appends one token per sequence); v5w waits first.
          const sqa::cuda::DecodeKernel dk = dname == "v3"   ? sqa::cuda::DecodeKernel::kV3
                                             : dname == "v4" ? sqa::cuda::DecodeKernel::kV4
                                             : dname == "v6" ? sqa::cuda::DecodeKernel::kV6
                                             : dname == "v8" ? sqa::cuda::DecodeKernel::kV8
                                             : dname == "v10" ? sqa::cuda::DecodeKernel::kV10
                                                             : sqa::cuda::DecodeKernel::kV5;
          const size_t wsb =
              sqa::cuda::DecodeWorkspaceBytes(batch, L.hq, L.hkv, dh, ctx, static_cast<int>(want_splits), dk);
          ws = nullptr;
          if (wsb > 0) {
            CK(cudaMalloc(&ws, wsb));
            CK(cudaMemset(ws, 0, wsb));  // v5's merge counters start at zero
          }
          sqa::cuda::DecodeParams p;
          p.q = q;
          p.batch = static_cast<int>(batch);
          p.k_cache = pk;
          p.v_cache = pv;
          p.block_size = bs;
          p.block_table_stride = per_seq;
          p.kv_lens = lens;
          p.max_kv_len = ctx;
          p.num_q_heads = L.hq;
          p.num_kv_heads = L.hkv;
          p.head_dim = dh;
          p.out = o;
          p.workspace = ws;
          p.workspace_bytes = wsb;
          p.kernel = dk;
          p.fresh_kv_tokens = v5up ? 1 : -1;
          p.num_splits = static_cast<int>(want_splits);
          p.fuse_min_split_keys = static_cast<int>(fuse_min);
          p.early_tiles = static_cast<int>(early_tiles);
          p.combine_trigger = static_cast<int>(comb_trig);
          p.combine_sliced = static_cast<int>(comb_sliced);
          // One CUDA graph of kGraphLaunches launches over the copies in turn (what the engine
          // replays per decode step): time per launch without host launch cost, with cold L2.
          constexpr int kGraphLaunches = 32;
          cudaGraph_t graph;
          cudaGraphExec_t exec;
          CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
          for (int i = 0; i < kGraphLaunches; ++i) {
            p.block_tables = tables + (i % copies) * nb;
            Check(sqa::cuda::LaunchAttentionDecode(p, s));
          }
          CK(cudaStreamEndCapture(s, &graph));
          CK(cudaGraphInstantiate(&exec, graph, 0));
          const double ms = MedianMs([&] { CK(cudaGraphLaunch(exec, s)); }, 2, 7, s) / kGraphLaunches;
          CK(cudaGraphExecDestroy(exec));
          CK(cudaGraphDestroy(graph));
          const int splits = sqa::cuda::DecodeSplits(p);
          if (decode_timeline && (v5up || dname == "v5w")) {
            TimelineRow(p, s, splits, copies, nb, tables, L.name, ctx, batch, dname, out);
          }
          // The same launch timed alone with events (host launch cost included), for reference.
          p.block_tables = tables;
          const double ms_single = MedianMs([&] { Check(sqa::cuda::LaunchAttentionDecode(p, s)); }, 3, 20, s);
          const double bw = kv_bytes / (ms * 1e-3);
          std::string knobs;
          if (fuse_min > 0) knobs += " fuse-min " + std::to_string(fuse_min);
          if (early_tiles > 0) knobs += " early-tiles " + std::to_string(early_tiles);
          if (comb_trig >= 0) knobs += " trigger " + std::to_string(comb_trig);
          if (comb_sliced >= 0) knobs += comb_sliced ? " sliced" : " per-head";
          std::printf("%-6s %8lld %5lld %-7s %7d %10.1f %10.1f %9.1f %6.1f%%%s\n", L.name.c_str(), (long long)ctx,
                      (long long)batch, dname.c_str(), splits, ms * 1e3, ms_single * 1e3, bw / 1e9,
                      100.0 * bw / ceiling, knobs.c_str());
          std::fflush(stdout);
          out["decode"].push_back({{"layout", L.name}, {"hq", L.hq}, {"hkv", L.hkv}, {"ctx", ctx}, {"batch", batch},
                                   {"kernel", dname}, {"splits", splits}, {"splits_requested", want_splits}, {"fuse_min_split_keys", fuse_min}, {"early_tiles", early_tiles}, {"combine_trigger", comb_trig}, {"combine_sliced", comb_sliced}, {"ms", ms}, {"ms_single_launch", ms_single},
                                   {"kv_bytes", kv_bytes}, {"bytes_per_s", bw}, {"fraction_of_copy_ceiling", bw / ceiling},
                                   {"read_floor_ms", floor_ms},
                                   {"timing", "graph of 32 launches over rotating cache copies (cold L2)"}});
          save();
          if (ws) cudaFree(ws);
        }
        cudaFree(pk);
        cudaFree(pv);
        cudaFree(tables);
        cudaFree(lens);
        cudaFree(q);
        cudaFree(o);
      }
    }
  }
  save();
  return 0;
}
