#include "router/registry.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/blocking_counter.h"
#include "services/common/log.h"

namespace sqa::router {

absl::StatusOr<HostPort> ParseHostPort(const std::string& spec) {
  HostPort hp;
  size_t colon;
  if (!spec.empty() && spec[0] == '[') {
    size_t close = spec.find(']');
    if (close == std::string::npos || close + 1 >= spec.size() || spec[close + 1] != ':') {
      return absl::InvalidArgumentError(
          absl::StrCat("worker address '", spec, "' is not [ipv6]:port"));
    }
    hp.host = spec.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = spec.rfind(':');
    if (colon == std::string::npos || colon == 0) {
      return absl::InvalidArgumentError(absl::StrCat("worker address '", spec, "' is not host:port"));
    }
    hp.host = spec.substr(0, colon);
  }
  hp.port = spec.substr(colon + 1);
  int port = 0;
  if (!absl::SimpleAtoi(hp.port, &port) || port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker address '", spec, "' has no valid port (1..65535)"));
  }
  return hp;
}

absl::StatusOr<std::vector<HostPort>> ParseWorkerList(const std::string& list) {
  std::vector<HostPort> out;
  for (absl::string_view part : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    auto hp = ParseHostPort(std::string(part));
    if (!hp.ok()) return hp.status();
    out.push_back(*hp);
  }
  if (out.empty()) return absl::InvalidArgumentError("--workers lists no host:port entries");
  return out;
}

absl::StatusOr<std::vector<std::string>> ResolveWithGetaddrinfo(const HostPort& hp) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(hp.host.c_str(), hp.port.c_str(), &hints, &res);
  if (rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve worker host '", hp.host, "': ", gai_strerror(rc)));
  }
  std::vector<std::string> v4, v6;
  for (addrinfo* p = res; p; p = p->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (p->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(p->ai_addr)->sin_addr, buf, sizeof buf);
      v4.push_back(absl::StrCat(buf, ":", hp.port));
    } else if (p->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(p->ai_addr)->sin6_addr, buf, sizeof buf);
      v6.push_back(absl::StrCat("[", buf, "]:", hp.port));
    }
  }
  freeaddrinfo(res);
  std::vector<std::string>& out = v4.empty() ? v6 : v4;
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Registry::Registry(RegistryOptions options, std::shared_ptr<WorkerClientFactory> factory,
                   Resolver resolver)
    : options_(std::move(options)), factory_(std::move(factory)), resolver_(std::move(resolver)) {}

Registry::~Registry() { Stop(); }

void Registry::Start() {
  RefreshNow(/*force_resolve=*/true);
  thread_ = std::thread([this] { Loop(); });
}

void Registry::Stop() {
  {
    absl::MutexLock lock(&stop_mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void Registry::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&stop_mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(stop_mu_) { return stopping_; };
      if (stop_mu_.AwaitWithTimeout(absl::Condition(&stopping), options_.health_interval)) return;
    }
    RefreshNow();
  }
}

void Registry::RefreshNow(bool force_resolve) {
  bool due;
  {
    absl::MutexLock lock(&mu_);
    due = force_resolve || absl::Now() - last_resolve_ >= options_.dns_refresh;
  }
  if (due) Resolve();
  ProbeAll();
}

void Registry::Resolve() {
  std::vector<std::string> addresses;
  bool any_failed = false;
  for (const HostPort& hp : options_.workers) {
    auto r = resolver_(hp);
    if (!r.ok()) {
      SQA_LOG(WARNING) << r.status().message();
      any_failed = true;
      continue;
    }
    addresses.insert(addresses.end(), r->begin(), r->end());
  }
  absl::MutexLock lock(&mu_);
  last_resolve_ = absl::Now();
  for (const std::string& a : addresses) {
    if (entries_.contains(a)) continue;
    Entry e;
    e.target = std::make_shared<Target>();
    e.target->address = a;
    e.target->client = factory_->Create(a);
    entries_.emplace(a, std::move(e));
    SQA_LOG(INFO) << "registry: added worker " << a;
  }
  // A failed lookup keeps the previous targets (a DNS hiccup must not empty the registry).
  if (any_failed) return;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (std::find(addresses.begin(), addresses.end(), it->first) == addresses.end()) {
      SQA_LOG(INFO) << "registry: removed worker " << it->first << " (no longer resolved)";
      entries_.erase(it++);
    } else {
      ++it;
    }
  }
}

void Registry::ProbeAll() {
  std::vector<std::shared_ptr<Target>> targets;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [a, e] : entries_) targets.push_back(e.target);
  }
  struct Result {
    bool serving = false;
    bool load_ok = false;
    v1::LoadReport load;
  };
  std::vector<Result> results(targets.size());
  absl::BlockingCounter pending(static_cast<int>(targets.size() * 2));
  for (size_t i = 0; i < targets.size(); ++i) {
    Result* r = &results[i];
    targets[i]->client->CheckHealth(options_.probe_timeout,
                                    [r, &pending](const grpc::Status& s, bool serving) {
                                      r->serving = s.ok() && serving;
                                      pending.DecrementCount();
                                    });
    targets[i]->client->GetLoad(options_.probe_timeout,
                                [r, &pending](const grpc::Status& s, v1::LoadReport load) {
                                  r->load_ok = s.ok();
                                  if (s.ok()) r->load = std::move(load);
                                  pending.DecrementCount();
                                });
  }
  pending.Wait();
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < targets.size(); ++i) {
      auto it = entries_.find(targets[i]->address);
      if (it == entries_.end() || it->second.target != targets[i]) continue;
      const Result& r = results[i];
      bool healthy = r.serving && r.load_ok && r.load.admitting() && r.load.max_context_tokens() > 0;
      if (healthy != it->second.healthy) {
        SQA_LOG(INFO) << "registry: worker " << targets[i]->address << " is now "
                      << (healthy ? "healthy" : "unhealthy");
      }
      it->second.healthy = healthy;
      if (r.load_ok) it->second.load = r.load;
    }
  }
  NotifyHealth();
}

void Registry::NotifyHealth() {
  std::function<void(int)> fn;
  int n = 0;
  {
    absl::MutexLock lock(&mu_);
    fn = on_health_;
    for (auto& [a, e] : entries_) n += e.healthy;
  }
  if (fn) fn(n);
}

std::vector<Pool> Registry::HealthyPools() const {
  std::map<int64_t, Pool> by_context;
  absl::MutexLock lock(&mu_);
  for (const auto& [a, e] : entries_) {
    if (!e.healthy) continue;
    TargetView v;
    v.target = e.target;
    v.max_context_tokens = e.load.max_context_tokens();
    v.outstanding_tokens = e.target->inflight_tokens.load(std::memory_order_relaxed) +
                           e.load.queued_tokens() + e.load.running_tokens();
    v.group_size = std::max(1, e.load.group_size());
    v.shard_mode = e.load.shard_mode();
    Pool& p = by_context[v.max_context_tokens];
    p.max_context_tokens = v.max_context_tokens;
    p.members.push_back(std::move(v));
  }
  std::vector<Pool> out;
  for (auto& [k, p] : by_context) out.push_back(std::move(p));
  return out;
}

int Registry::HealthyCount() const {
  absl::MutexLock lock(&mu_);
  int n = 0;
  for (const auto& [a, e] : entries_) n += e.healthy;
  return n;
}

std::shared_ptr<Target> Registry::AnyHealthy() const {
  absl::MutexLock lock(&mu_);
  for (const auto& [a, e] : entries_) {
    if (e.healthy) return e.target;
  }
  return nullptr;
}

void Registry::MarkFailed(const std::string& address) {
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(address);
    if (it == entries_.end() || !it->second.healthy) return;
    it->second.healthy = false;
    SQA_LOG(WARNING) << "registry: worker " << address << " failed a call; unhealthy until its next good probe";
  }
  NotifyHealth();
}

void Registry::SetOnHealthChange(std::function<void(int)> fn) {
  absl::MutexLock lock(&mu_);
  on_health_ = std::move(fn);
}

}  // namespace sqa::router
