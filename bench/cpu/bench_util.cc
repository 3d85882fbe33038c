#include "bench/cpu/bench_util.h"

#include <cblas.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sqa::bench {

std::vector<std::string> SplitComma(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else if (c != ' ') {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

absl::StatusOr<Args> Args::Parse(const std::vector<std::string>& argv, const std::vector<std::string>& known,
                                 const std::vector<std::string>& boolean) {
  Args args;
  auto is_in = [](const std::vector<std::string>& v, const std::string& k) {
    return std::find(v.begin(), v.end(), k) != v.end();
  };
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "' (options start with --)"));
    }
    std::string key = a.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = key.find('='); eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
      has_value = true;
    }
    if (!is_in(known, key) && !is_in(boolean, key)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown option --", key, "; accepted: --", absl::StrJoin(known, ", --"),
                       boolean.empty() ? "" : ", --", absl::StrJoin(boolean, ", --")));
    }
    if (is_in(boolean, key)) {
      if (has_value && value != "1" && value != "true" && value != "0" && value != "false") {
        return absl::InvalidArgumentError(absl::StrCat("--", key, " takes no value (or true/false)"));
      }
      args.values_[key] = has_value ? value : "true";
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argv.size()) return absl::InvalidArgumentError(absl::StrCat("--", key, " needs a value"));
      value = argv[++i];
    }
    args.values_[key] = value;
  }
  return args;
}

std::string Args::Get(const std::string& key, const std::string& def) const {
  auto it = values_.find(key);
  return it == values_.end() ? def : it->second;
}

absl::StatusOr<int64_t> Args::GetInt(const std::string& key, int64_t def) const {
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  int64_t v = 0;
  if (!absl::SimpleAtoi(it->second, &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", key, " wants an integer, got '", it->second, "'"));
  }
  return v;
}

absl::StatusOr<double> Args::GetDouble(const std::string& key, double def) const {
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  double v = 0;
  if (!absl::SimpleAtod(it->second, &v) || !std::isfinite(v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", key, " wants a number, got '", it->second, "'"));
  }
  return v;
}

absl::StatusOr<std::vector<int64_t>> Args::GetIntList(const std::string& key,
                                                      const std::vector<int64_t>& def) const {
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  std::vector<int64_t> out;
  for (const std::string& part : SplitComma(it->second)) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(part, &v) || v <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", key, " wants comma-separated positive integers, got '", it->second, "'"));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("--", key, " is empty"));
  return out;
}

std::vector<std::string> Args::GetList(const std::string& key, const std::vector<std::string>& def) const {
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  return SplitComma(it->second);
}

double ProcessCpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

MachineInfo DescribeMachine() {
  MachineInfo m;
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M UTC", &tm);
  m.date_utc = buf;
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      size_t colon = line.find(':');
      if (colon != std::string::npos) m.cpu_model = line.substr(colon + 2);
      break;
    }
  }
  if (m.cpu_model.empty()) m.cpu_model = "unknown CPU";
  m.logical_cpus = static_cast<int>(std::thread::hardware_concurrency());
  std::ifstream loadavg("/proc/loadavg");
  std::string a, b, c;
  if (loadavg >> a >> b >> c) m.load_average = absl::StrCat(a, " ", b, " ", c);
  const char* cfg = openblas_get_config();
  const char* core = openblas_get_corename();
  m.blas_config = absl::StrCat(cfg ? cfg : "", "; kernels ", core ? core : "?");
  if (const char* env = std::getenv("OPENBLAS_CORETYPE")) absl::StrAppend(&m.blas_config, " (OPENBLAS_CORETYPE=", env, ")");
  return m;
}

std::string MachineMarkdown(const MachineInfo& m, const std::string& command, int threads) {
  std::string s;
  absl::StrAppend(&s, "- date: ", m.date_utc, "\n");
  absl::StrAppend(&s, "- machine: ", m.cpu_model, ", ", m.logical_cpus, " logical CPUs; ",
                  threads > 0 ? absl::StrCat(threads, " threads used") : std::string("all of them used"),
                  "; load average at start ", m.load_average, " (other work on the machine skews timings)\n");
  absl::StrAppend(&s, "- BLAS: ", m.blas_config, "\n");
  absl::StrAppend(&s, "- command: `", command, "`\n");
  return s;
}

std::string MdTable::Render() const {
  std::string s = "| " + absl::StrJoin(header_, " | ") + " |\n|";
  for (size_t i = 0; i < header_.size(); ++i) s += "---|";
  s += "\n";
  for (const auto& r : rows_) s += "| " + absl::StrJoin(r, " | ") + " |\n";
  return s;
}

std::string Fmt(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  return buf;
}

std::string FmtTime(double s) {
  if (s < 1e-3) return Fmt("%.0f us", s * 1e6);
  if (s < 1.0) return Fmt("%.3g ms", s * 1e3);
  return Fmt("%.3g s", s);
}

std::string FmtBytes(double b) {
  if (b >= double(1 << 30)) return Fmt("%.2f GiB", b / double(1 << 30));
  if (b >= double(1 << 20)) return Fmt("%.1f MiB", b / double(1 << 20));
  return Fmt("%.1f KiB", b / 1024.0);
}

void FillRandom(float* data, size_t n, uint64_t seed) {
  // splitmix64 -> uniform in [-sqrt(3), sqrt(3)) (unit variance); fast enough for GiB of KV.
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  const float scale = 1.7320508f / float(1u << 23);
  for (size_t i = 0; i < n; ++i) {
    x += 0x9E3779B97F4A7C15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    data[i] = (float(int32_t(z >> 40)) - float(1 << 23)) * scale;
  }
}

CacheFlusher::CacheFlusher(size_t max_bytes) {
  long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  size_t want = l3 > 0 ? size_t(l3) * 2 : size_t{64} << 20;
  want = std::min(want, max_bytes);
  buf_.assign(want / sizeof(float), 1.f);
}

void CacheFlusher::Flush() {
  // Read-modify-write every cache line so dirty lines of the benchmark's data are evicted.
  float acc = 0.f;
  for (size_t i = 0; i < buf_.size(); i += 16) {
    buf_[i] += 1.f;
    acc += buf_[i];
  }
  sink_ += acc;
  asm volatile("" : : "r"(&sink_) : "memory");
}

void EnsureFastOpenBlasKernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;
  const char* core = openblas_get_corename();
  if (core == nullptr || std::string(core) != "Prescott") return;
  __builtin_cpu_init();
  const char* better = nullptr;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
    better = "SkylakeX";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    better = "Haswell";
  }
  if (better == nullptr) return;
  std::fprintf(stderr,
               "sqa-bench: OpenBLAS chose its generic Prescott kernels for this CPU; re-running with "
               "OPENBLAS_CORETYPE=%s (set OPENBLAS_CORETYPE yourself to override)\n",
               better);
  setenv("OPENBLAS_CORETYPE", better, 1);
  execv("/proc/self/exe", argv);
  std::fprintf(stderr, "sqa-bench: re-exec failed (%s); continuing with the Prescott kernels\n", std::strerror(errno));
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return absl::UnavailableError(absl::StrCat("cannot open ", path, " for writing"));
  f << text;
  f.close();
  if (!f) return absl::DataLossError(absl::StrCat("writing ", path, " failed"));
  return absl::OkStatus();
}

}  // namespace sqa::bench
