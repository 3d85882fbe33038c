#include "services/metrics.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <thread>

#include <prometheus/exposer.h>

#include "absl/strings/str_cat.h"
#include "services/port_file.h"

namespace sqa {

std::shared_ptr<prometheus::Registry> ProcessRegistry() {
  static auto* registry = new std::shared_ptr<prometheus::Registry>(std::make_shared<prometheus::Registry>());
  return *registry;
}

// The exposer's HTTP server (Debian's civetweb) starts its threads with a small fixed stack. glibc
// carves static TLS out of every thread's stack, and CUDA's cuBLASLt brings about 94 KB of it, so in
// a process linked with the CUDA backend civetweb's pthread_create fails with EINVAL ("Cannot
// create first worker thread"). Interposing pthread_attr_setstacksize (the executable's definition
// wins over libc's for civetweb's call) raises any requested stack below 1 MiB to 1 MiB.
extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size) {
  using Fn = int (*)(pthread_attr_t*, size_t);
  static const Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  return real(attr, std::max<size_t>(size, size_t{1} << 20));
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const MetricsOptions& options, std::shared_ptr<prometheus::Registry> registry) {
  std::unique_ptr<MetricsServer> self(new MetricsServer());
  self->registry_ = std::move(registry);
  self->host_ = options.host;
  if (options.port < 0) return self;
  if (options.port > 65535) return absl::InvalidArgumentError(absl::StrCat("metrics port ", options.port, " is above 65535"));
  const std::string addr = options.host.find(':') != std::string::npos
                               ? absl::StrCat("[", options.host, "]:", options.port)
                               : absl::StrCat(options.host, ":", options.port);
  try {
    self->exposer_ = std::make_unique<prometheus::Exposer>(addr, static_cast<size_t>(options.num_threads));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", addr, ": ", e.what()));
  }
  self->exposer_->RegisterCollectable(self->registry_);
  const std::vector<int> ports = self->exposer_->GetListeningPorts();
  if (ports.empty() || ports[0] <= 0)
    return absl::UnavailableError(absl::StrCat("metrics exposer on ", addr, " reports no listening port"));
  self->port_ = ports[0];
  if (!options.port_file.empty()) {
    absl::Status st = WritePortFile(options.port_file, self->port_);
    if (!st.ok()) return st;
  }
  return self;
}

MetricsServer::~MetricsServer() {
  if (exposer_ == nullptr) return;
  // civetweb's listener polls with a 2 s timeout, so stopping it takes up to 2 s unless a
  // connection wakes it: poke it from a helper thread while the exposer shuts down.
  std::atomic<bool> stopped{false};
  std::thread poker;
  in_addr addr{};
  const std::string host = (host_.empty() || host_ == "0.0.0.0") ? "127.0.0.1" : host_;
  if (port_ > 0 && inet_pton(AF_INET, host.c_str(), &addr) == 1) {
    poker = std::thread([&stopped, addr, port = port_] {
      while (!stopped.load()) {
        const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
          sockaddr_in sa{};
          sa.sin_family = AF_INET;
          sa.sin_port = htons(static_cast<uint16_t>(port));
          sa.sin_addr = addr;
          (void)connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
          close(fd);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
  }
  exposer_.reset();
  stopped = true;
  if (poker.joinable()) poker.join();
}

prometheus::Histogram::BucketBoundaries ExponentialBuckets(double start, double factor, int count) {
  prometheus::Histogram::BucketBoundaries b;
  double v = start;
  for (int i = 0; i < count; ++i, v *= factor) b.push_back(v);
  return b;
}

prometheus::Histogram::BucketBoundaries ExponentialBucketsRange(double min, double max, int count) {
  prometheus::Histogram::BucketBoundaries b;
  if (count < 2 || min <= 0 || max <= min) return {min};
  const double f = std::pow(max / min, 1.0 / (count - 1));
  for (int i = 0; i < count; ++i) b.push_back(i == count - 1 ? max : min * std::pow(f, i));
  return b;
}

namespace {
// m * 10^e for e in [e_min, e_max], m in {1, 2.5, 5}, keeping values in [lo, hi].
prometheus::Histogram::BucketBoundaries OneTwoFive(int e_min, int e_max, double lo, double hi) {
  prometheus::Histogram::BucketBoundaries b;
  for (int e = e_min; e <= e_max; ++e)
    for (double m : {1.0, 2.5, 5.0}) {
      const double v = m * std::pow(10.0, e);
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) b.push_back(v);
    }
  return b;
}
}  // namespace

prometheus::Histogram::BucketBoundaries LatencyBucketsSeconds() {
  // 1 ms .. 500 s in 1-2.5-5 steps (readable bucket labels), then 600 s.
  prometheus::Histogram::BucketBoundaries b = OneTwoFive(-3, 2, 0.001, 500);
  b.push_back(600.0);
  return b;
}

prometheus::Histogram::BucketBoundaries StepBucketsSeconds() { return OneTwoFive(-5, 1, 5e-5, 10); }

prometheus::Histogram::BucketBoundaries TokenCountBuckets() { return ExponentialBuckets(1, 2, 21); }

}  // namespace sqa
