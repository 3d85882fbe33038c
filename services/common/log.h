// Minimal leveled logging to stderr. SQA_LOG(INFO) << ...; SQA_VLOG(2) << ... costs one integer
// compare when the verbosity (env SQA_VERBOSE) is lower. A per-thread prefix (request id, rank)
// can be set with ScopedLogPrefix.
#pragma once

#include <sstream>
#include <string>

namespace sqa::log {

enum class Level { kInfo, kWarning, kError };

int Verbosity();  // from env SQA_VERBOSE, read once
void SetProcessTag(std::string tag);  // e.g. "worker[rank=1]"

class Line {
 public:
  Line(Level level, const char* file, int line);
  ~Line();
  template <typename T>
  Line& operator<<(const T& v) {
    os_ << v;
    return *this;
  }

 private:
  std::ostringstream os_;
};

class ScopedLogPrefix {
 public:
  explicit ScopedLogPrefix(std::string prefix);
  ~ScopedLogPrefix();

 private:
  std::string previous_;
};

}  // namespace sqa::log

#define SQA_LOG_LEVEL_INFO ::sqa::log::Level::kInfo
#define SQA_LOG_LEVEL_WARNING ::sqa::log::Level::kWarning
#define SQA_LOG_LEVEL_ERROR ::sqa::log::Level::kError
#define SQA_LOG(sev) ::sqa::log::Line(SQA_LOG_LEVEL_##sev, __FILE__, __LINE__)
#define SQA_VLOG(n) \
  if (::sqa::log::Verbosity() >= (n)) ::sqa::log::Line(::sqa::log::Level::kInfo, __FILE__, __LINE__)
