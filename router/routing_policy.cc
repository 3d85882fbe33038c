#include "router/routing_policy.h"

#include <deque>
#include <random>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"

namespace sqa::router {
namespace {

class AffinityP2CPolicy final : public RoutingPolicy {
 public:
  explicit AffinityP2CPolicy(AffinityP2COptions options)
      : options_(options), rng_(options.seed ? options.seed : std::random_device{}()) {}

  size_t Pick(const RouteRequest& request, absl::Span<const Candidate> candidates) override {
    absl::MutexLock lock(&mu_);
    if (!request.session_id.empty()) {
      auto it = sessions_.find(request.session_id);
      if (it != sessions_.end()) {
        for (size_t i = 0; i < candidates.size(); ++i) {
          if (candidates[i].address == it->second) return i;
        }
      }
    }
    if (candidates.size() == 1) return 0;
    std::uniform_int_distribution<size_t> dist(0, candidates.size() - 1);
    size_t a = dist(rng_);
    size_t b = dist(rng_);
    while (b == a) b = dist(rng_);
    // Ties go to the first draw, which is random: equal loads spread evenly.
    return candidates[b].outstanding_tokens < candidates[a].outstanding_tokens ? b : a;
  }

  void RecordSession(const std::string& session_id, const std::string& address) override {
    if (session_id.empty()) return;
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = sessions_.insert_or_assign(session_id, address);
    if (!inserted) return;
    order_.push_back(session_id);
    while (order_.size() > options_.max_sessions) {
      sessions_.erase(order_.front());
      order_.pop_front();
    }
  }

 private:
  const AffinityP2COptions options_;
  absl::Mutex mu_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::string> sessions_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> order_ ABSL_GUARDED_BY(mu_);  // insertion order, for eviction
};

}  // namespace

std::unique_ptr<RoutingPolicy> NewAffinityP2CPolicy(AffinityP2COptions options) {
  return std::make_unique<AffinityP2CPolicy>(options);
}

}  // namespace sqa::router
