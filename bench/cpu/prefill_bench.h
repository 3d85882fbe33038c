// `sqa-bench prefill`: end-to-end prefill through Engine::Prefill on deterministic random models
// (WriteRandomModel presets) for several sizes and layouts. Each (preset, layout) runs in a child
// process (this binary re-executed with the hidden subcommand `prefill-child`) so that its peak
// resident memory (VmHWM) counts only that model: weights, activations and KV cache.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "workers/engine/model/tensor.h"

namespace sqa::bench {

struct PrefillBenchOptions {
  // Preset names; "1b/MHA+SQA" limits that preset to the listed layouts instead of `layouts`.
  std::vector<std::string> presets = {"small", "medium"};
  std::vector<std::string> layouts = {"MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "rSQA"};
  int64_t tokens = 4096;
  DType dtype = DType::kF32;
  int threads = 0;
  int64_t chunk = 2048;        // Engine max_chunk_tokens
  int64_t block_size = 64;
  double cell_budget_s = 2.0;  // repeats = clamp(budget / first run, 1, 5)
  std::string work_dir;        // where models are written; default $TMPDIR or /tmp
  bool quick = false;
  std::string command;
};

// Splits a --presets entry "name" or "name/L1+L2" into the preset and its layouts (`defaults`
// when none are given).
absl::StatusOr<std::pair<std::string, std::vector<std::string>>> SplitPresetSpec(
    const std::string& spec, const std::vector<std::string>& defaults);

absl::StatusOr<PrefillBenchOptions> ParsePrefillOptions(const std::vector<std::string>& args, std::string* json_path,
                                                       std::string* md_path);

// One child run's measurements.
struct PrefillCellResult {
  std::string preset, layout;
  int64_t hq = 0, hkv = 0, hidden = 0, layers = 0, tokens = 0;
  double params = 0;          // parameters (embedding included)
  double weight_bytes = 0;    // bytes on disk
  double load_seconds = 0;    // Model::Load + Engine::Create (weights uploaded)
  double prefill_seconds = 0; // median over reps
  double prefill_cpu_seconds = 0;  // median process CPU time of a prefill (all threads)
  int reps = 0;
  double tokens_per_s = 0;
  double est_gflop = 0;       // linear + attention FLOPs of the prefill, estimated from the shapes
  double est_gflops = 0;
  double kv_cache_bytes = 0;  // K+V of the prompt over all layers
  double peak_rss_bytes = 0;  // VmHWM of the child
  double speedup_vs_mha = 0;  // tokens/s over MHA's for the same preset (0 when MHA not run)
  double cpu_speedup_vs_mha = 0;  // MHA's CPU time over this one's
};

// Runs the benchmark (writes models under a fresh temporary directory, removes them after).
absl::StatusOr<std::vector<PrefillCellResult>> RunPrefillBench(const PrefillBenchOptions& options,
                                                               const std::string& self_exe);

int PrefillMain(const std::vector<std::string>& args, const std::string& command);
// The hidden child subcommand: loads one model, runs the prefill, prints one JSON line.
int PrefillChildMain(const std::vector<std::string>& args);

}  // namespace sqa::bench
