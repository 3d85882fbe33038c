// sqa-bench: CPU benchmarks of the engine. Thin main: picks the subcommand; the benchmarks live in
// the sqa_bench_cpu library (bench/cpu/).
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "bench/cpu/attention_bench.h"
#include "bench/cpu/bench_util.h"
#include "bench/cpu/prefill_bench.h"

namespace {

constexpr char kUsage[] =
    "usage: sqa-bench attention [--lengths 1024,2048,4096,8192,16384] [--heads 16] [--head-dim 128]\n"
    "                           [--threads T] [--layouts MHA,SQA,...] [--decode-batches 1,8]\n"
    "                           [--block-size 64] [--cell-budget S] [--no-flush] [--quick]\n"
    "                           [--json F] [--md F]\n"
    "       sqa-bench prefill   [--presets small,medium] [--layouts MHA,GQA,...] [--tokens 4096]\n"
    "                           [--dtype f32|bf16|f16] [--threads T] [--chunk 2048] [--work-dir D]\n"
    "                           [--quick] [--json F] [--md F]\n";

}  // namespace

int main(int argc, char** argv) {
  sqa::bench::EnsureFastOpenBlasKernels(argv);
  std::vector<std::string> all(argv, argv + argc);
  if (argc < 2 || all[1] == "--help" || all[1] == "-h" || all[1] == "help") {
    std::cerr << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = all[1];
  std::vector<std::string> rest(all.begin() + 2, all.end());
  const std::string command = absl::StrJoin(all, " ");
  if (cmd == "attention") return sqa::bench::AttentionMain(rest, command);
  if (cmd == "prefill") return sqa::bench::PrefillMain(rest, command);
  if (cmd == "prefill-child") return sqa::bench::PrefillChildMain(rest);
  std::cerr << "sqa-bench: unknown subcommand '" << cmd << "'\n" << kUsage;
  return 2;
}
