// Choice of a target inside one pool (the seam between the registry and the routing rule).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/types/span.h"

namespace sqa::router {

// What the policy knows about one healthy target of the chosen pool.
struct Candidate {
  std::string address;
  // Tokens the router believes the target still has to process: the router's own in-flight
  // accounting plus the queued and running tokens of its last load report.
  int64_t outstanding_tokens = 0;
};

struct RouteRequest {
  std::string session_id;  // empty = no affinity
  int64_t tokens = 0;      // prompt + max_tokens (the work this request adds)
};

// Thread-safe. `candidates` is never empty.
class RoutingPolicy {
 public:
  virtual ~RoutingPolicy() = default;
  // Returns an index into `candidates`.
  virtual size_t Pick(const RouteRequest& request, absl::Span<const Candidate> candidates) = 0;
  // The target ran or is running the session's request (affinity is recorded after a success,
  // so a retried request sticks to where it actually ran).
  virtual void RecordSession(const std::string& session_id, const std::string& address) = 0;
};

struct AffinityP2COptions {
  size_t max_sessions = 100000;  // affinity entries kept (oldest dropped first)
  uint64_t seed = 0;             // 0 = random
};

// Session affinity while the session's last target is a candidate (i.e. healthy, in the pool,
// not excluded), else least outstanding tokens between two random candidates.
std::unique_ptr<RoutingPolicy> NewAffinityP2CPolicy(AffinityP2COptions options = {});

}  // namespace sqa::router
