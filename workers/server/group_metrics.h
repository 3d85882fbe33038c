// Prometheus metrics of a worker group rank (sqa_worker_group_* / sqa_worker_collective_*). Every
// series carries the rank, the group size and the shard mode as labels, so dashboards can compare
// ranks (balance) and groups of different shapes.
//
//   sqa_worker_group_info{group,rank,group_size,shard_mode}                 gauge      1
//   sqa_worker_group_step_duration_seconds{rank,group_size,shard_mode}      histogram  one step on this rank
//   sqa_worker_collective_bytes_total{op,backend,rank,group_size,shard_mode}   counter  payload bytes
//   sqa_worker_collective_seconds_total{op,backend,rank,group_size,shard_mode} counter  time in collectives
//   sqa_worker_group_attention_seconds_total{rank,group_size,shard_mode}      counter  prefill attention
//   sqa_worker_group_exposed_comm_seconds_total{rank,group_size,shard_mode}   counter  communication no
//       computation hid (see workers/engine/shard/timings.h); at most the collective seconds
//
// Not thread-safe: call Observe from the thread that drives the engine.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "workers/engine/shard/communicator.h"
#include "workers/engine/shard/timings.h"

namespace sqa::worker {

class GroupMetrics {
 public:
  GroupMetrics(prometheus::Registry& registry, const std::string& group, int rank, int group_size,
               const std::string& shard_mode, std::vector<const Communicator*> communicators);
  // After a step: its duration, and the growth of every communicator's counters and of the
  // engine's timings (when given: Engine::group_timings(), cumulative) since last time.
  void Observe(double step_seconds, const GroupTimings* timings = nullptr);

 private:
  struct Series {
    prometheus::Counter* bytes;
    prometheus::Counter* seconds;
    CollectiveStats::Entry last;
  };
  prometheus::Histogram* step_;
  prometheus::Counter* attention_;
  prometheus::Counter* exposed_;
  GroupTimings last_timings_;
  std::vector<const Communicator*> comms_;
  std::vector<std::map<std::string, Series>> series_;  // per communicator, per op
};

}  // namespace sqa::worker
