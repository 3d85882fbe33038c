// Registry of worker groups: static addresses and DNS names re-resolved periodically (e.g. a
// Kubernetes headless Service resolving to one IP per pod), health through grpc.health.v1 and
// load through Worker.GetLoad, probed every `health_interval`. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "router/worker_client.h"
#include "sqa/v1/worker.pb.h"

namespace sqa::router {

// "host:port" or "[v6]:port".
struct HostPort {
  std::string host;
  std::string port;
};
absl::StatusOr<HostPort> ParseHostPort(const std::string& spec);
// Comma-separated list of host:port entries (empty entries are skipped; at least one required).
absl::StatusOr<std::vector<HostPort>> ParseWorkerList(const std::string& list);

// Resolves a host to addresses usable as gRPC targets ("1.2.3.4:5", "[::1]:5").
using Resolver = std::function<absl::StatusOr<std::vector<std::string>>(const HostPort&)>;
// getaddrinfo; numeric hosts pass through. When a name has IPv4 addresses only those are used
// ("localhost" would otherwise count one worker twice, as 127.0.0.1 and ::1).
absl::StatusOr<std::vector<std::string>> ResolveWithGetaddrinfo(const HostPort& hp);

// One routable address (a group leader). Shared with in-flight requests, so a target that leaves
// the registry stays valid for the streams still using it.
struct Target {
  std::string address;
  std::shared_ptr<WorkerClient> client;
  // Tokens of requests the router has sent here and not yet finished (prompt + max_tokens).
  std::atomic<int64_t> inflight_tokens{0};
  std::atomic<int64_t> inflight_requests{0};
};

struct TargetView {
  std::shared_ptr<Target> target;
  int64_t max_context_tokens = 0;
  int64_t outstanding_tokens = 0;  // router accounting + last report's queued + running tokens
  int32_t group_size = 1;
  std::string shard_mode;
};

struct Pool {
  int64_t max_context_tokens = 0;
  std::vector<TargetView> members;  // healthy targets only
};

struct RegistryOptions {
  std::vector<HostPort> workers;
  absl::Duration health_interval = absl::Seconds(1);
  absl::Duration probe_timeout = absl::Milliseconds(800);
  absl::Duration dns_refresh = absl::Seconds(30);
};

class Registry {
 public:
  Registry(RegistryOptions options, std::shared_ptr<WorkerClientFactory> factory,
           Resolver resolver = ResolveWithGetaddrinfo);
  ~Registry();  // Stop()s

  // Resolves and probes once (synchronously), then keeps doing so in a background thread.
  void Start();
  void Stop();
  // One synchronous round: re-resolve when due (or `force_resolve`), then probe every target.
  void RefreshNow(bool force_resolve = false);

  // Healthy targets grouped by max context, ascending.
  std::vector<Pool> HealthyPools() const;
  int HealthyCount() const;
  // Any healthy target (for calls that need no particular pool), or nullptr.
  std::shared_ptr<Target> AnyHealthy() const;
  // Marks the target unhealthy until its next successful probe (a call to it failed with a
  // transport error).
  void MarkFailed(const std::string& address);
  // Called after each probe round and MarkFailed with the number of healthy targets.
  void SetOnHealthChange(std::function<void(int)> fn);

 private:
  struct Entry {
    std::shared_ptr<Target> target;
    bool healthy = false;
    v1::LoadReport load;
  };
  void Resolve();
  void ProbeAll();
  void Loop();
  void NotifyHealth();

  const RegistryOptions options_;
  std::shared_ptr<WorkerClientFactory> factory_;
  Resolver resolver_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::function<void(int)> on_health_ ABSL_GUARDED_BY(mu_);
  absl::Time last_resolve_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Mutex stop_mu_;
  bool stopping_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread thread_;
};

}  // namespace sqa::router
