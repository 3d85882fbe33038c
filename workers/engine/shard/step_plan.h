// The leader's step plans, broadcast to every follower rank so that all ranks run the same layer
// loop in lockstep (ARCHITECTURE.md §4). A plan is a small host-side byte string sent over the
// group's control communicator (Gloo, also in GPU groups): a fixed header, then the payload.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "workers/engine/shard/communicator.h"

namespace sqa {

struct PlanSegment {
  int64_t seq = 0;
  bool all_logits = false;
  bool hidden_state = false;
  std::vector<int32_t> tokens;
};

struct StepPlan {
  // Followers create a sequence when a forward plan first names it, so there is no "new" plan.
  enum class Kind : uint32_t { kForward = 1, kRelease = 3, kStop = 4 };
  Kind kind = Kind::kForward;
  int64_t seq = 0;                    // kRelease
  std::vector<PlanSegment> segments;  // kForward
};

std::string EncodePlan(const StepPlan& plan);
// INTERNAL on a malformed plan (a bug or a corrupted stream: the group must be re-formed).
absl::StatusOr<StepPlan> DecodePlan(const std::string& bytes);

// Leader side: broadcasts `plan` (header with the size, then the payload) from rank 0.
absl::Status SendPlan(Communicator& control, const StepPlan& plan);
// Follower side: waits up to `timeout` for the next plan from rank 0.
absl::StatusOr<StepPlan> ReceivePlan(Communicator& control, std::chrono::milliseconds timeout);

}  // namespace sqa
