// Shared pieces of sqa-bench: command-line parsing, timing, machine description, Markdown tables,
// random fills and a cache flush. Nothing here is thread-safe; the benchmarks are single-driver.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sqa::bench {

// `--key value` / `--key=value` / `--flag` arguments after the subcommand. Unknown keys are an
// error so a typo never silently runs the default benchmark.
class Args {
 public:
  // `known` lists the accepted keys (without "--"); `boolean` the ones that take no value.
  static absl::StatusOr<Args> Parse(const std::vector<std::string>& argv, const std::vector<std::string>& known,
                                    const std::vector<std::string>& boolean);
  bool Has(const std::string& key) const { return values_.count(key) > 0; }
  std::string Get(const std::string& key, const std::string& def) const;
  absl::StatusOr<int64_t> GetInt(const std::string& key, int64_t def) const;
  absl::StatusOr<double> GetDouble(const std::string& key, double def) const;
  // Comma-separated positive integers ("1024,2048").
  absl::StatusOr<std::vector<int64_t>> GetIntList(const std::string& key, const std::vector<int64_t>& def) const;
  std::vector<std::string> GetList(const std::string& key, const std::vector<std::string>& def) const;

 private:
  std::map<std::string, std::string> values_;
};

std::vector<std::string> SplitComma(const std::string& s);

// Seconds since an arbitrary epoch (steady clock).
inline double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
// CPU seconds (user + system, all threads) this process has used. Under load from other
// processes wall time stretches but CPU time does not, so timings report both.
double ProcessCpuSeconds();
double Median(std::vector<double> v);

// What the numbers were measured on.
struct MachineInfo {
  std::string date_utc;      // "2026-11-28 21:40 UTC"
  std::string cpu_model;     // /proc/cpuinfo "model name"
  int logical_cpus = 0;
  std::string load_average;  // /proc/loadavg's first three fields at start: other work skews timings
  std::string blas_config;   // openblas_get_config() and the kernel set in use
};
MachineInfo DescribeMachine();
// Markdown lines for the header of a results file.
std::string MachineMarkdown(const MachineInfo& m, const std::string& command, int threads);

// A Markdown table built row by row; cells are preformatted strings.
class MdTable {
 public:
  explicit MdTable(std::vector<std::string> header) : header_(std::move(header)) {}
  void AddRow(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string Render() const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

// printf-style formatting to std::string.
std::string Fmt(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Time in the most readable unit: "812 us", "14.2 ms", "3.41 s".
std::string FmtTime(double seconds);
std::string FmtBytes(double bytes);  // "268.4 MiB"

// Fills `n` floats with a deterministic pseudo-random uniform distribution of unit variance.
void FillRandom(float* data, size_t n, uint64_t seed);

// Evicts the last-level cache by writing a buffer larger than it (so bandwidth figures count
// memory traffic, not cache hits). Owns its buffer; reuse one instance.
class CacheFlusher {
 public:
  explicit CacheFlusher(size_t max_bytes = size_t{512} << 20);
  void Flush();
  size_t bytes() const { return buf_.size() * sizeof(float); }

 private:
  std::vector<float> buf_;
  float sink_ = 0.f;
};

// OpenBLAS 0.3.21 (Debian 12) does not know recent Xeons (e.g. family 6 model 207) and falls back
// to its generic "Prescott" SSE3 kernels: sgemm runs ~30x below the machine's peak. The kernel set
// is chosen when the library loads, from OPENBLAS_CORETYPE, so when that variable is unset, the
// library picked Prescott and the CPU has AVX-512 (or AVX2), this sets OPENBLAS_CORETYPE=SkylakeX
// (or Haswell) and re-executes the program through /proc/self/exe with the same arguments. An
// explicit OPENBLAS_CORETYPE is always respected. Returns only when no re-exec was needed or it
// failed (then it prints why and the program continues with the slow kernels).
void EnsureFastOpenBlasKernels(char** argv);

// Writes `text` to `path` (creating parent directories is the caller's job).
absl::Status WriteFile(const std::string& path, const std::string& text);

}  // namespace sqa::bench
