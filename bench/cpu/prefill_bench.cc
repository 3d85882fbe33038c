#include "bench/cpu/prefill_bench.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench/cpu/bench_util.h"
#include "nlohmann/json.hpp"
#include "services/common/status.h"
#include "workers/engine/backend.h"
#include "workers/engine/engine.h"
#include "workers/engine/model/mkmodel.h"
#include "workers/engine/model/model.h"

namespace sqa::bench {
namespace {

namespace fs = std::filesystem;

constexpr int kMaxReps = 5;

// VmHWM (peak resident set) of this process in bytes, 0 if unavailable.
double PeakRssBytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      int64_t kb = 0;
      std::string num;
      for (char c : line) {
        if (c >= '0' && c <= '9') num.push_back(c);
      }
      if (absl::SimpleAtoi(num, &kb)) return double(kb) * 1024.0;
    }
  }
  return 0;
}

// Runs `argv` (argv[0] is the executable path, no shell) and returns its stdout; its stderr goes
// to ours. Non-zero exit is an error naming the command.
absl::StatusOr<std::string> RunChild(const std::vector<std::string>& argv) {
  int fds[2];
  if (pipe(fds) != 0) return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fds[0], buf, sizeof(buf));
    if (n > 0) {
      out.append(buf, size_t(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("child `", absl::StrJoin(argv, " "), "` failed (",
                                            WIFEXITED(status) ? absl::StrCat("exit ", WEXITSTATUS(status))
                                                              : absl::StrCat("signal ", WTERMSIG(status)),
                                            "); see its messages above"));
  }
  return out;
}

double DirBytes(const std::string& dir) {
  double total = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file(ec)) total += double(e.file_size(ec));
  }
  return total;
}

double ParamCount(const ModelConfig& c) {
  const double d = double(c.hidden_size), I = double(c.intermediate_size), V = double(c.vocab_size);
  double per_layer = d * double(c.q_dim()) + 2 * d * double(c.kv_dim()) + double(c.o_in_dim()) * d + 3 * d * I + 2 * d;
  double p = V * d + double(c.num_hidden_layers) * per_layer + d;
  if (!c.tie_word_embeddings) p += V * d;
  return p;
}

// FLOPs of a chunked prefill of n tokens: every linear layer on every token, causal attention
// (2*2*Ha*n^2*dh/2 per layer) and the LM head on the last token of each chunk.
double PrefillFlops(const ModelConfig& c, int64_t n, int64_t chunk) {
  const double d = double(c.hidden_size), I = double(c.intermediate_size);
  double linear = 2.0 * double(n) *
                  (d * double(c.q_dim()) + 2 * d * double(c.kv_dim()) + double(c.o_in_dim()) * d + 3 * d * I);
  double attn = 2.0 * double(c.attn_heads()) * double(n) * double(n) * double(c.head_dim);
  double chunks = double((n + chunk - 1) / chunk);
  return double(c.num_hidden_layers) * (linear + attn) + chunks * 2.0 * d * double(c.vocab_size);
}

absl::StatusOr<DType> ParseDType(const std::string& s) {
  if (s == "f32" || s == "F32" || s == "float32") return DType::kF32;
  if (s == "bf16" || s == "BF16" || s == "bfloat16") return DType::kBF16;
  if (s == "f16" || s == "F16" || s == "float16") return DType::kF16;
  return absl::InvalidArgumentError(absl::StrCat("--dtype wants f32, bf16 or f16, got '", s, "'"));
}

std::string RenderMarkdown(const PrefillBenchOptions& o, const std::vector<PrefillCellResult>& cells,
                           const MachineInfo& m, double total_s) {
  std::string s = "## CPU end-to-end prefill (`sqa-bench prefill`)\n\n";
  absl::StrAppend(&s, MachineMarkdown(m, o.command, o.threads));
  absl::StrAppend(&s, "- ", o.tokens, "-token prompt through Engine::Prefill (chunks of ", o.chunk,
                  " tokens), random weights (", std::string(DTypeName(o.dtype)),
                  " on disk), f32 compute; each model in its own process, peak memory = that process's VmHWM; CPU-s = process CPU time of one prefill (all threads; it includes BLAS/OpenMP threads spinning while they wait)\n");
  absl::StrAppend(&s, Fmt("- total benchmark time %.0f s (model writing included)\n\n", total_s));
  MdTable t({"preset", "layout", "Hq/Hkv", "d x layers", "params", "prefill", "tokens/s", "vs MHA", "CPU-s",
             "vs MHA (CPU)", "GFLOP/s (est.)", "KV cache", "peak RSS"});
  for (const auto& c : cells) {
    t.AddRow({c.preset, c.layout, absl::StrCat(c.hq, "/", c.hkv), absl::StrCat(c.hidden, " x ", c.layers),
              Fmt("%.3gM", c.params / 1e6), FmtTime(c.prefill_seconds), Fmt("%.0f", c.tokens_per_s),
              c.speedup_vs_mha > 0 ? Fmt("%.2fx", c.speedup_vs_mha) : "-", Fmt("%.3g", c.prefill_cpu_seconds),
              c.cpu_speedup_vs_mha > 0 ? Fmt("%.2fx", c.cpu_speedup_vs_mha) : "-", Fmt("%.1f", c.est_gflops),
              FmtBytes(c.kv_cache_bytes), FmtBytes(c.peak_rss_bytes)});
  }
  absl::StrAppend(&s, t.Render());
  return s;
}

std::string RenderJson(const PrefillBenchOptions& o, const std::vector<PrefillCellResult>& cells,
                       const MachineInfo& m, double total_s) {
  nlohmann::json j;
  j["benchmark"] = "prefill";
  j["date_utc"] = m.date_utc;
  j["machine"] = {{"cpu_model", m.cpu_model}, {"logical_cpus", m.logical_cpus}, {"load_average", m.load_average},
                  {"blas_config", m.blas_config}};
  j["command"] = o.command;
  j["options"] = {{"presets", o.presets}, {"layouts", o.layouts}, {"tokens", o.tokens},
                  {"dtype", std::string(DTypeName(o.dtype))}, {"threads", o.threads}, {"chunk", o.chunk},
                  {"block_size", o.block_size}, {"quick", o.quick}};
  j["results"] = nlohmann::json::array();
  for (const auto& c : cells) {
    j["results"].push_back({{"preset", c.preset},
                            {"layout", c.layout},
                            {"hq", c.hq},
                            {"hkv", c.hkv},
                            {"hidden", c.hidden},
                            {"layers", c.layers},
                            {"tokens", c.tokens},
                            {"params", c.params},
                            {"weight_bytes", c.weight_bytes},
                            {"load_seconds", c.load_seconds},
                            {"prefill_seconds", c.prefill_seconds},
                            {"prefill_cpu_seconds", c.prefill_cpu_seconds},
                            {"cpu_speedup_vs_mha", c.cpu_speedup_vs_mha},
                            {"reps", c.reps},
                            {"tokens_per_s", c.tokens_per_s},
                            {"est_gflop", c.est_gflop},
                            {"est_gflops", c.est_gflops},
                            {"kv_cache_bytes", c.kv_cache_bytes},
                            {"peak_rss_bytes", c.peak_rss_bytes},
                            {"speedup_vs_mha", c.speedup_vs_mha}});
  }
  j["total_seconds"] = total_s;
  return j.dump(2) + "\n";
}

// RAII temporary directory.
class TempDir {
 public:
  static absl::StatusOr<TempDir> Make(const std::string& parent) {
    std::string tmpl = (fs::path(parent) / "sqa-bench-XXXXXX").string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data()) == nullptr) {
      return absl::UnavailableError(absl::StrCat("cannot create a temporary directory under ", parent, ": ",
                                                 std::strerror(errno), " (set --work-dir)"));
    }
    return TempDir(buf.data());
  }
  TempDir(TempDir&& o) noexcept : path_(std::move(o.path_)) { o.path_.clear(); }
  TempDir(const TempDir&) = delete;
  ~TempDir() {
    if (!path_.empty()) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  const std::string& path() const { return path_; }

 private:
  explicit TempDir(std::string p) : path_(std::move(p)) {}
  std::string path_;
};

}  // namespace

absl::StatusOr<std::pair<std::string, std::vector<std::string>>> SplitPresetSpec(
    const std::string& spec, const std::vector<std::string>& defaults) {
  size_t slash = spec.find('/');
  if (slash == std::string::npos) return std::make_pair(spec, defaults);
  std::vector<std::string> layouts;
  std::string cur;
  for (char ch : spec.substr(slash + 1) + "+") {
    if (ch == '+') {
      if (!cur.empty()) layouts.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(ch);
    }
  }
  if (slash == 0 || layouts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad --presets entry '", spec, "'; expected NAME or NAME/LAYOUT+LAYOUT (e.g. 1b/MHA+SQA)"));
  }
  return std::make_pair(spec.substr(0, slash), layouts);
}

absl::StatusOr<PrefillBenchOptions> ParsePrefillOptions(const std::vector<std::string>& argv, std::string* json_path,
                                                       std::string* md_path) {
  SQA_ASSIGN_OR_RETURN(Args a, Args::Parse(argv,
                                           {"presets", "layouts", "tokens", "dtype", "threads", "chunk", "block-size",
                                            "cell-budget", "work-dir", "json", "md"},
                                           {"quick"}));
  PrefillBenchOptions o;
  o.quick = a.Has("quick") && a.Get("quick", "") != "false" && a.Get("quick", "") != "0";
  if (o.quick) {
    o.presets = {"tiny"};
    o.layouts = {"MHA", "SQA", "rSQA"};
    o.tokens = 200;
    o.chunk = 64;
    o.cell_budget_s = 0;
  }
  o.presets = a.GetList("presets", o.presets);
  o.layouts = a.GetList("layouts", o.layouts);
  SQA_ASSIGN_OR_RETURN(o.tokens, a.GetInt("tokens", o.tokens));
  SQA_ASSIGN_OR_RETURN(o.dtype, ParseDType(a.Get("dtype", "f32")));
  SQA_ASSIGN_OR_RETURN(int64_t threads, a.GetInt("threads", 0));
  SQA_ASSIGN_OR_RETURN(o.chunk, a.GetInt("chunk", o.chunk));
  SQA_ASSIGN_OR_RETURN(o.block_size, a.GetInt("block-size", o.block_size));
  SQA_ASSIGN_OR_RETURN(o.cell_budget_s, a.GetDouble("cell-budget", o.cell_budget_s));
  o.work_dir = a.Get("work-dir", "");
  if (o.work_dir.empty()) {
    const char* t = std::getenv("TMPDIR");
    o.work_dir = (t && *t) ? t : "/tmp";
  }
  if (o.tokens <= 0 || o.tokens > (int64_t{1} << 22)) return absl::InvalidArgumentError("--tokens must be in 1..4194304");
  if (o.chunk <= 0) return absl::InvalidArgumentError("--chunk must be positive");
  if (o.block_size <= 0) return absl::InvalidArgumentError("--block-size must be positive");
  if (threads < 0 || threads > 1024) return absl::InvalidArgumentError("--threads must be in 0..1024");
  o.threads = static_cast<int>(threads);
  if (o.presets.empty() || o.layouts.empty()) return absl::InvalidArgumentError("--presets and --layouts must not be empty");
  // Validate every name before spending minutes writing models.
  for (const auto& spec : o.presets) {
    SQA_ASSIGN_OR_RETURN(auto pl, SplitPresetSpec(spec, o.layouts));
    for (const auto& l : pl.second) {
      SQA_RETURN_IF_ERROR(PresetConfig(pl.first, l).status());
    }
  }
  *json_path = a.Get("json", "");
  *md_path = a.Get("md", "");
  return o;
}

absl::StatusOr<std::vector<PrefillCellResult>> RunPrefillBench(const PrefillBenchOptions& o,
                                                               const std::string& self_exe) {
  SQA_ASSIGN_OR_RETURN(TempDir tmp, TempDir::Make(o.work_dir));
  std::vector<PrefillCellResult> cells;
  for (const std::string& spec : o.presets) {
    SQA_ASSIGN_OR_RETURN(auto preset_layouts, SplitPresetSpec(spec, o.layouts));
    const std::string& preset = preset_layouts.first;
    for (const std::string& layout : preset_layouts.second) {
      SQA_ASSIGN_OR_RETURN(ModelConfig cfg, PresetConfig(preset, layout));
      MkModelOptions mk;
      mk.config = cfg;
      mk.dtype = o.dtype;
      mk.seed = 1;
      mk.threads = o.threads;
      const std::string dir = (fs::path(tmp.path()) / absl::StrCat(preset, "-", layout)).string();
      double t0 = NowSeconds();
      SQA_RETURN_IF_ERROR(WriteRandomModel(mk, dir));
      std::cerr << Fmt("prefill: wrote %s %s (%s) in %.1f s\n", preset.c_str(), layout.c_str(),
                       FmtBytes(DirBytes(dir)).c_str(), NowSeconds() - t0);
      SQA_ASSIGN_OR_RETURN(std::string out,
                           RunChild({self_exe, "prefill-child", "--model", dir, "--tokens", absl::StrCat(o.tokens),
                                     "--threads", absl::StrCat(o.threads), "--chunk", absl::StrCat(o.chunk),
                                     "--block-size", absl::StrCat(o.block_size), "--cell-budget",
                                     absl::StrCat(o.cell_budget_s)}));
      nlohmann::json j = nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object() || !j.contains("prefill_seconds")) {
        return absl::InternalError(absl::StrCat("prefill-child printed no result for ", preset, " ", layout, ": '",
                                                out, "'"));
      }
      PrefillCellResult c;
      c.preset = preset;
      c.layout = layout;
      c.hq = cfg.num_query_heads;
      c.hkv = cfg.num_key_value_heads;
      c.hidden = cfg.hidden_size;
      c.layers = cfg.num_hidden_layers;
      c.tokens = o.tokens;
      c.params = ParamCount(cfg);
      c.weight_bytes = DirBytes(dir);
      c.load_seconds = j.value("load_seconds", 0.0);
      c.prefill_seconds = j.value("prefill_seconds", 0.0);
      c.prefill_cpu_seconds = j.value("prefill_cpu_seconds", 0.0);
      c.reps = j.value("reps", 0);
      c.kv_cache_bytes = j.value("kv_cache_bytes", 0.0);
      c.peak_rss_bytes = j.value("peak_rss_bytes", 0.0);
      c.tokens_per_s = c.prefill_seconds > 0 ? double(o.tokens) / c.prefill_seconds : 0;
      c.est_gflop = PrefillFlops(cfg, o.tokens, o.chunk) / 1e9;
      c.est_gflops = c.prefill_seconds > 0 ? c.est_gflop / c.prefill_seconds : 0;
      std::cerr << Fmt("prefill: %s %s %lld tokens in %.2f s = %.0f tokens/s, peak RSS %s\n", preset.c_str(),
                       layout.c_str(), static_cast<long long>(o.tokens), c.prefill_seconds, c.tokens_per_s,
                       FmtBytes(c.peak_rss_bytes).c_str());
      cells.push_back(c);
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  }
  for (auto& c : cells) {
    for (const auto& m : cells) {
      if (m.preset != c.preset || m.layout != "MHA") continue;
      if (m.tokens_per_s > 0) c.speedup_vs_mha = c.tokens_per_s / m.tokens_per_s;
      if (c.prefill_cpu_seconds > 0) c.cpu_speedup_vs_mha = m.prefill_cpu_seconds / c.prefill_cpu_seconds;
    }
  }
  return cells;
}

int PrefillMain(const std::vector<std::string>& args, const std::string& command) {
  std::string json_path, md_path;
  absl::StatusOr<PrefillBenchOptions> o = ParsePrefillOptions(args, &json_path, &md_path);
  if (!o.ok()) {
    std::cerr << "sqa-bench prefill: " << o.status().message() << "\n";
    return 2;
  }
  o->command = command;
  const double t0 = NowSeconds();
  MachineInfo machine = DescribeMachine();
  std::error_code ec;
  std::string self = fs::read_symlink("/proc/self/exe", ec).string();
  if (ec || self.empty()) {
    std::cerr << "sqa-bench prefill: cannot find this executable through /proc/self/exe\n";
    return 1;
  }
  absl::StatusOr<std::vector<PrefillCellResult>> cells = RunPrefillBench(*o, self);
  if (!cells.ok()) {
    std::cerr << "sqa-bench prefill: " << cells.status() << "\n";
    return 1;
  }
  const double total = NowSeconds() - t0;
  std::string md = RenderMarkdown(*o, *cells, machine, total);
  std::cout << md << std::flush;
  if (!md_path.empty()) {
    if (absl::Status s = WriteFile(md_path, md); !s.ok()) {
      std::cerr << "sqa-bench prefill: " << s.message() << "\n";
      return 1;
    }
  }
  if (!json_path.empty()) {
    if (absl::Status s = WriteFile(json_path, RenderJson(*o, *cells, machine, total)); !s.ok()) {
      std::cerr << "sqa-bench prefill: " << s.message() << "\n";
      return 1;
    }
  }
  return 0;
}

namespace {

absl::StatusOr<nlohmann::json> RunChildCell(const std::vector<std::string>& argv) {
  SQA_ASSIGN_OR_RETURN(Args a, Args::Parse(argv, {"model", "tokens", "threads", "chunk", "block-size", "cell-budget"},
                                           {}));
  const std::string dir = a.Get("model", "");
  if (dir.empty()) return absl::InvalidArgumentError("--model is required");
  SQA_ASSIGN_OR_RETURN(int64_t tokens, a.GetInt("tokens", 4096));
  SQA_ASSIGN_OR_RETURN(int64_t threads, a.GetInt("threads", 0));
  SQA_ASSIGN_OR_RETURN(int64_t chunk, a.GetInt("chunk", 2048));
  SQA_ASSIGN_OR_RETURN(int64_t block_size, a.GetInt("block-size", 64));
  SQA_ASSIGN_OR_RETURN(double budget, a.GetDouble("cell-budget", 2.0));
  if (tokens <= 0 || chunk <= 0 || block_size <= 0) return absl::InvalidArgumentError("sizes must be positive");

  const double t0 = NowSeconds();
  SQA_ASSIGN_OR_RETURN(std::unique_ptr<Model> loaded, Model::Load(dir));
  std::shared_ptr<const Model> model(std::move(loaded));
  const ModelConfig& cfg = model->config();
  BackendOptions bo;
  bo.device = DeviceKind::kCpu;
  bo.num_threads = static_cast<int>(threads);
  SQA_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, CreateBackend(bo));
  const size_t act_size = DTypeSize(backend->act_dtype());
  EngineOptions eo;
  eo.block_size = block_size;
  eo.num_kv_blocks = (tokens + block_size - 1) / block_size;  // exactly the prompt's KV
  eo.max_chunk_tokens = chunk;
  SQA_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(model, std::move(backend), eo));
  const double load_s = NowSeconds() - t0;

  std::vector<int32_t> prompt(static_cast<size_t>(tokens));
  uint64_t x = 12345;
  for (auto& t : prompt) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    t = static_cast<int32_t>((x >> 33) % static_cast<uint64_t>(cfg.vocab_size));
  }
  std::vector<double> cpu_times;
  auto run = [&](absl::Span<const int32_t> toks) -> absl::StatusOr<double> {
    SeqId seq = engine->NewSequence();
    double c = ProcessCpuSeconds();
    double s = NowSeconds();
    absl::StatusOr<Logits> logits = engine->Prefill(seq, toks, /*all_logits=*/false);
    double t = NowSeconds() - s;
    cpu_times.push_back(ProcessCpuSeconds() - c);
    engine->Release(seq);
    if (!logits.ok()) return logits.status();
    if (logits->rows() < 1) return absl::InternalError("prefill returned no logits");
    return t;
  };
  // Warm-up on a short prompt (thread pools, first-touch of activation buffers).
  SQA_RETURN_IF_ERROR(run(absl::MakeConstSpan(prompt).subspan(0, std::min<size_t>(prompt.size(), 64))).status());
  cpu_times.clear();
  std::vector<double> times;
  SQA_ASSIGN_OR_RETURN(double first, run(prompt));
  times.push_back(first);
  const int target = std::clamp(static_cast<int>(budget / first), 1, kMaxReps);
  while (static_cast<int>(times.size()) < target) {
    SQA_ASSIGN_OR_RETURN(double t, run(prompt));
    times.push_back(t);
  }
  const double kv_bytes = double(cfg.num_hidden_layers) * double(eo.num_kv_blocks) * double(block_size) *
                          double(cfg.kv_dim()) * 2.0 * double(act_size);
  nlohmann::json j = {{"load_seconds", load_s},      {"prefill_seconds", Median(times)},
                      {"prefill_cpu_seconds", Median(cpu_times)},
                      {"reps", times.size()},        {"kv_cache_bytes", kv_bytes},
                      {"peak_rss_bytes", PeakRssBytes()}};
  return j;
}

}  // namespace

int PrefillChildMain(const std::vector<std::string>& args) {
  absl::StatusOr<nlohmann::json> j = RunChildCell(args);
  if (!j.ok()) {
    std::cerr << "sqa-bench prefill-child: " << j.status() << "\n";
    return 1;
  }
  std::cout << j->dump() << "\n" << std::flush;
  return 0;
}

}  // namespace sqa::bench
