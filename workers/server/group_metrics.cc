#include "workers/server/group_metrics.h"

#include "absl/strings/str_cat.h"
#include "services/metrics.h"

namespace sqa::worker {
namespace {

const std::vector<std::pair<std::string, CollectiveStats::Entry CollectiveStats::*>>& Ops() {
  static const std::vector<std::pair<std::string, CollectiveStats::Entry CollectiveStats::*>> ops = {
      {"broadcast", &CollectiveStats::broadcast},
      {"all_reduce", &CollectiveStats::all_reduce},
      {"all_gather", &CollectiveStats::all_gather},
      {"send_recv", &CollectiveStats::send_recv}};
  return ops;
}

}  // namespace

GroupMetrics::GroupMetrics(prometheus::Registry& r, const std::string& group, int rank, int group_size,
                           const std::string& shard_mode, std::vector<const Communicator*> communicators)
    : comms_(std::move(communicators)) {
  const std::map<std::string, std::string> shape = {
      {"rank", absl::StrCat(rank)}, {"group_size", absl::StrCat(group_size)}, {"shard_mode", shard_mode}};
  auto info_labels = shape;
  info_labels["group"] = group;
  prometheus::BuildGauge()
      .Name("sqa_worker_group_info")
      .Help("This worker's place in its group (always 1)")
      .Register(r)
      .Add(info_labels)
      .Set(1);
  step_ = &prometheus::BuildHistogram()
               .Name("sqa_worker_group_step_duration_seconds")
               .Help("Wall time of one step on this rank of the group")
               .Register(r)
               .Add(shape, StepBucketsSeconds());
  attention_ = &prometheus::BuildCounter()
                    .Name("sqa_worker_group_attention_seconds_total")
                    .Help("Seconds this rank spent in prefill attention (balance across ranks)")
                    .Register(r)
                    .Add(shape);
  exposed_ = &prometheus::BuildCounter()
                  .Name("sqa_worker_group_exposed_comm_seconds_total")
                  .Help("Seconds this rank's engine waited on communication that no computation hid")
                  .Register(r)
                  .Add(shape);
  auto& bytes = prometheus::BuildCounter()
                    .Name("sqa_worker_collective_bytes_total")
                    .Help("Payload bytes this rank sent or contributed, by collective")
                    .Register(r);
  auto& seconds = prometheus::BuildCounter()
                      .Name("sqa_worker_collective_seconds_total")
                      .Help("Seconds this rank spent in collectives (waits for peers included), by collective")
                      .Register(r);
  for (const Communicator* c : comms_) {
    std::map<std::string, Series> per_op;
    for (const auto& [op, member] : Ops()) {
      auto labels = shape;
      labels["op"] = op;
      labels["backend"] = c->backend_name();
      per_op[op] = Series{&bytes.Add(labels), &seconds.Add(labels), c->stats().*member};
    }
    series_.push_back(std::move(per_op));
  }
}

void GroupMetrics::Observe(double step_seconds, const GroupTimings* timings) {
  step_->Observe(step_seconds);
  if (timings != nullptr) {
    const GroupTimings d = *timings - last_timings_;
    attention_->Increment(d.attention_seconds);
    exposed_->Increment(d.exposed_comm_seconds);
    last_timings_ = *timings;
  }
  for (size_t i = 0; i < comms_.size(); ++i) {
    for (const auto& [op, member] : Ops()) {
      Series& s = series_[i][op];
      const CollectiveStats::Entry& now = comms_[i]->stats().*member;
      s.bytes->Increment(static_cast<double>(now.bytes - s.last.bytes));
      s.seconds->Increment(now.seconds - s.last.seconds);
      s.last = now;
    }
  }
}

}  // namespace sqa::worker
