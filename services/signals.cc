#include "services/signals.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace sqa {
namespace {

std::atomic<int> g_write_fd{-1};
std::atomic<int> g_signals_seen{0};
std::atomic<bool> g_installed{false};
int g_read_fd = -1;
struct sigaction g_old_int, g_old_term;

constexpr unsigned char kStopByte = 0;  // sent by the destructor to end the watcher thread

void Handler(int signo) {
  if (g_signals_seen.fetch_add(1) >= 1) _exit(128 + signo);
  const int fd = g_write_fd.load();
  if (fd >= 0) {
    const unsigned char b = static_cast<unsigned char>(signo);
    ssize_t r = write(fd, &b, 1);
    (void)r;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShutdownSignals>> ShutdownSignals::Install(std::function<void(int)> on_signal) {
  if (g_installed.exchange(true)) return absl::FailedPreconditionError("shutdown signal handlers are already installed");
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    g_installed = false;
    return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
  }
  g_read_fd = fds[0];
  g_write_fd = fds[1];
  g_signals_seen = 0;
  std::unique_ptr<ShutdownSignals> self(new ShutdownSignals());
  self->on_signal_ = std::move(on_signal);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = Handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, &g_old_int);
  sigaction(SIGTERM, &sa, &g_old_term);
  self->thread_ = std::thread([p = self.get()] { p->Run(); });
  return self;
}

void ShutdownSignals::Run() {
  while (true) {
    unsigned char b = 0;
    const ssize_t r = read(g_read_fd, &b, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0 || b == kStopByte) return;
    on_signal_(static_cast<int>(b));
    return;  // only the first signal runs the callback; a second one exits in the handler
  }
}

void ShutdownSignals::Trigger(int signo) {
  if (g_signals_seen.fetch_add(1) >= 1) return;
  const unsigned char b = static_cast<unsigned char>(signo);
  ssize_t r = write(g_write_fd.load(), &b, 1);
  (void)r;
}

ShutdownSignals::~ShutdownSignals() {
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
  const unsigned char b = kStopByte;
  ssize_t r = write(g_write_fd.load(), &b, 1);
  (void)r;
  if (thread_.joinable()) thread_.join();
  const int wfd = g_write_fd.exchange(-1);
  close(wfd);
  close(g_read_fd);
  g_read_fd = -1;
  g_installed = false;
}

}  // namespace sqa
