// SIGINT/SIGTERM -> graceful shutdown. The handler only writes the signal number to a pipe
// (async-signal-safe); a watcher thread reads it and runs the callback, so the callback may lock,
// log, and shut servers down. A second signal while the first is being handled exits the process
// at once (_exit(128 + signo)): a stuck shutdown can always be interrupted with another Ctrl-C.
#pragma once

#include <functional>
#include <memory>
#include <thread>

#include "absl/status/statusor.h"

namespace sqa {

class ShutdownSignals {
 public:
  // Installs the handlers (process-wide; at most one instance at a time: FAILED_PRECONDITION
  // otherwise). `on_signal(signo)` runs once, on the watcher thread, for the first signal.
  static absl::StatusOr<std::unique_ptr<ShutdownSignals>> Install(std::function<void(int signo)> on_signal);
  // Restores the previous handlers and joins the watcher thread. Must not be called from the callback.
  ~ShutdownSignals();

  // Runs the callback as if `signo` had arrived (tests; also lets main trigger the same path).
  void Trigger(int signo);

 private:
  ShutdownSignals() = default;
  void Run();
  std::function<void(int)> on_signal_;
  std::thread thread_;
};

}  // namespace sqa
