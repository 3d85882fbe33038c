// Port files: how a process started on port 0 tells its parent (tests, sqa-local) which port it
// got. Format: the port number in decimal followed by one '\n' (e.g. "40123\n"), nothing else.
// Written atomically (a temporary file in the same directory, then rename), so a reader never sees
// a partial file. Thread-safe.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sqa {

absl::Status WritePortFile(const std::string& path, int port);
// NOT_FOUND while the file does not exist; INVALID_ARGUMENT when it does not hold a port.
absl::StatusOr<int> ReadPortFile(const std::string& path);
// Polls until the file exists and holds a port; DEADLINE_EXCEEDED after `timeout`.
absl::StatusOr<int> WaitForPortFile(const std::string& path, absl::Duration timeout);

}  // namespace sqa
