// `sqa-bench attention`: causal-prefill and decode attention through the Backend seam for every
// layout of REFERENCE.md at a baseline head count H, against OpenBLAS sgemm measured in the same
// run. The backend is driven exactly as the engine drives it: K/V written into a paged KV cache
// with WriteKv, then AttentionPrefill / AttentionDecode over block tables.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sqa::bench {

// One attention layout at baseline H (REFERENCE.md's table).
struct AttnLayout {
  std::string name;
  int64_t hq = 0;
  int64_t hkv = 0;
  int64_t ha() const { return hq > hkv ? hq : hkv; }  // heads actually computed
};
// MHA, GQA, MQA, SQA, sSQA, xSQA, xSMQA, rSQA for baseline `h` (must be a multiple of 4).
absl::StatusOr<std::vector<AttnLayout>> LayoutsForBaseline(int64_t h);

struct AttentionBenchOptions {
  std::vector<int64_t> lengths = {1024, 2048, 4096, 8192, 16384};
  std::vector<int64_t> decode_batches = {1, 8};
  std::vector<std::string> layouts;  // empty = all
  int64_t heads = 16;                // baseline H
  int64_t head_dim = 128;
  int64_t block_size = 64;
  int threads = 0;                   // 0 = all cores
  // Time budget of one prefill cell (layout x length): repeats = clamp(budget / first run, 1, 7).
  double prefill_cell_budget_s = 2.0;
  double decode_cell_budget_s = 0.15;
  int64_t sgemm_size = 2048;
  bool flush_decode = true;          // evict the LLC before each decode repeat
  bool quick = false;                // CI smoke: tiny sizes, one repeat
  std::string command;               // for the report header
};

// Parses the subcommand's arguments (everything after "attention").
absl::StatusOr<AttentionBenchOptions> ParseAttentionOptions(const std::vector<std::string>& args,
                                                           std::string* json_path, std::string* md_path);

struct PrefillCell {
  std::string layout;
  int64_t hq = 0, hkv = 0, tokens = 0;
  int reps = 0;
  double seconds = 0;  // median
  double gflop = 0;    // causal FLOPs / 1e9
  double gflops = 0;
  double cpu_seconds = 0;     // median process CPU time of a run (all threads)
  double speedup_vs_mha = 0;  // by wall time; 0 when MHA was not measured
  double cpu_speedup_vs_mha = 0;  // by CPU time: robust to other load on the machine
  double target_speedup = 0;
  bool target_met = false;      // by wall time
  bool cpu_target_met = false;  // by CPU time
  double ratio_to_sgemm = 0;
};

struct DecodeCell {
  std::string layout;
  int64_t hq = 0, hkv = 0, tokens = 0, batch = 0;
  int reps = 0;
  double seconds = 0;
  double kv_bytes = 0;  // K+V bytes read
  double gbps = 0;      // kv_bytes / seconds / 1e9
};

struct AttentionBenchResult {
  AttentionBenchOptions options;
  double sgemm_gflops = 0;
  std::vector<double> sgemm_samples;
  std::vector<PrefillCell> prefill;
  std::vector<DecodeCell> decode;
  double total_seconds = 0;
  std::string markdown;  // the report (header + tables)
  std::string json;      // raw numbers
};

// Runs the benchmark; progress goes to stderr.
absl::StatusOr<AttentionBenchResult> RunAttentionBench(const AttentionBenchOptions& options);

// Runs, prints the Markdown to stdout and writes the optional files. Returns a process exit code.
int AttentionMain(const std::vector<std::string>& args, const std::string& command);

}  // namespace sqa::bench
