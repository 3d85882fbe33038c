// Child processes for sqa-local and the integration tests: fork/exec with PR_SET_PDEATHSIG so no
// child outlives its parent, and a stop that is SIGTERM, wait, then SIGKILL.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace sqa::router {

// The directory of the running executable (/proc/self/exe), where sibling binaries live.
absl::StatusOr<std::string> SelfExeDir();

class ChildProcess {
 public:
  // Starts argv[0] (a path) with argv. stdout/stderr go to `log_file` when set (appended), else
  // are inherited. `env` entries ("K=V") are added to the inherited environment. The child gets
  // SIGKILL if the spawning *thread* exits, so spawn from a thread that lives as long as the
  // child should (the main thread).
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(const std::vector<std::string>& argv,
                                                             const std::string& log_file = "",
                                                             const std::vector<std::string>& env = {});
  ~ChildProcess();  // Stop(5 s) if still running

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }
  // False once it has exited (reaps it).
  bool Running();
  // Exit status as from waitpid (valid once !Running()).
  int wait_status() const { return wait_status_; }
  // SIGTERM, wait up to `grace`, then SIGKILL; returns the wait status.
  int Stop(absl::Duration grace);
  void Signal(int signo);

 private:
  ChildProcess() = default;
  pid_t pid_ = -1;
  std::string name_;
  bool exited_ = false;
  int wait_status_ = 0;
};

// A loopback TCP port that is free right now (for addresses that must be known before the process
// that binds them starts, such as a group leader's rendezvous address).
absl::StatusOr<int> PickFreePort();

// Last `max_bytes` of a text file (for error messages about a child that failed).
std::string TailOfFile(const std::string& path, size_t max_bytes = 2000);

}  // namespace sqa::router
