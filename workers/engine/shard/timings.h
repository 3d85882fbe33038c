// Where a rank's time goes during its forward passes, for balance and overlap measurements of
// groups (sqa-group-bench, the sqa_worker_group_* metrics). Host clocks; on a GPU backend the
// engine reads them after stream synchronizations, so they measure finished device work.
#pragma once

#include <cstdint>

namespace sqa {

// Totals since the engine was made. Monotonic, so two snapshots bracket one prefill.
struct GroupTimings {
  int64_t steps = 0;           // forward passes this rank ran (a follower counts the leader's steps)
  double step_seconds = 0;     // their wall time, device work included
  // Prefill attention: the attention kernels (sequence mode: also writing the visiting K/V blocks
  // and the LSE merges) of passes with a prompt. Decode attention is not timed (it would need a
  // synchronization on the decode path). In sequence groups always measured (the ring already
  // synchronizes at every step); elsewhere only with GroupOptions::time_attention.
  double attention_seconds = 0;
  // Time the rank's engine thread was blocked in communication that no computation hid: every
  // collective it called itself (step plans, capacity agreement, heads-mode all-reduces, gathers),
  // and in sequence mode the part of each ring transfer still running when the attention over
  // the current blocks had finished. Never more than the communicators' own collective seconds.
  double exposed_comm_seconds = 0;

  GroupTimings& operator-=(const GroupTimings& o) {
    steps -= o.steps;
    step_seconds -= o.step_seconds;
    attention_seconds -= o.attention_seconds;
    exposed_comm_seconds -= o.exposed_comm_seconds;
    return *this;
  }
  friend GroupTimings operator-(GroupTimings a, const GroupTimings& b) { return a -= b; }
};

}  // namespace sqa
