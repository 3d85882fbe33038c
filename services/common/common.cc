#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

#include "services/common/log.h"
#include "services/common/status.h"

namespace sqa::internal {
void CheckFailed(const char* file, int line, const char* cond) {
  std::fprintf(stderr, "%s:%d: check failed: %s\n", file, line, cond);
  std::abort();
}
}  // namespace sqa::internal

namespace sqa::log {
namespace {
std::string& ProcessTag() {
  static std::string tag;
  return tag;
}
thread_local std::string t_prefix;
std::mutex g_write_mu;
}  // namespace

int Verbosity() {
  static const int v = [] {
    const char* s = std::getenv("SQA_VERBOSE");
    return s ? std::atoi(s) : 0;
  }();
  return v;
}

void SetProcessTag(std::string tag) { ProcessTag() = std::move(tag); }

Line::Line(Level level, const char* file, int line) {
  const char c = level == Level::kInfo ? 'I' : level == Level::kWarning ? 'W' : 'E';
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%H:%M:%S", &tm);
  const char* base = file;
  for (const char* p = file; *p; ++p)
    if (*p == '/') base = p + 1;
  os_ << c << buf << '.' << ms << ' ';
  if (!ProcessTag().empty()) os_ << ProcessTag() << ' ';
  os_ << base << ':' << line << "] ";
  if (!t_prefix.empty()) os_ << t_prefix << ' ';
}

Line::~Line() {
  os_ << '\n';
  std::lock_guard<std::mutex> lock(g_write_mu);
  std::fputs(os_.str().c_str(), stderr);
}

ScopedLogPrefix::ScopedLogPrefix(std::string prefix) : previous_(std::move(t_prefix)) {
  t_prefix = std::move(prefix);
}
ScopedLogPrefix::~ScopedLogPrefix() { t_prefix = std::move(previous_); }

}  // namespace sqa::log
