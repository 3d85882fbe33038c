#include "services/port_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace sqa {

absl::Status WritePortFile(const std::string& path, int port) {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write port file ", tmp, ": ", std::strerror(errno)));
    out << port << '\n';
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("cannot write port file ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return absl::PermissionDeniedError(absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> ReadPortFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("port file ", path, " does not exist (yet)"));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  absl::string_view v = absl::StripAsciiWhitespace(text);
  int port = 0;
  if (!absl::SimpleAtoi(v, &port) || port <= 0 || port > 65535)
    return absl::InvalidArgumentError(absl::StrCat("port file ", path, " holds '", v, "', not a port number"));
  return port;
}

absl::StatusOr<int> WaitForPortFile(const std::string& path, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    absl::StatusOr<int> port = ReadPortFile(path);
    if (port.ok() || !absl::IsNotFound(port.status())) return port;
    if (absl::Now() >= deadline)
      return absl::DeadlineExceededError(
          absl::StrCat("port file ", path, " did not appear within ", absl::FormatDuration(timeout)));
    absl::SleepFor(absl::Milliseconds(20));
  }
}

}  // namespace sqa
