#include "workers/engine/shard/step_plan.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "services/common/status.h"

namespace sqa {
namespace {

template <typename T>
void Put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

class Reader {
 public:
  explicit Reader(const std::string& s) : s_(s) {}
  template <typename T>
  bool Get(T* v) {
    if (pos_ + sizeof(T) > s_.size()) return false;
    std::memcpy(v, s_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool done() const { return pos_ == s_.size(); }
  size_t left() const { return s_.size() - pos_; }

 private:
  const std::string& s_;
  size_t pos_ = 0;
};

constexpr uint32_t kMagic = 0x53514150;  // "SQAP"

}  // namespace

std::string EncodePlan(const StepPlan& plan) {
  std::string out;
  Put<uint32_t>(out, kMagic);
  Put<uint32_t>(out, static_cast<uint32_t>(plan.kind));
  Put<int64_t>(out, plan.seq);
  Put<uint64_t>(out, plan.segments.size());
  for (const PlanSegment& s : plan.segments) {
    Put<int64_t>(out, s.seq);
    Put<uint8_t>(out, s.all_logits ? 1 : 0);
    Put<uint8_t>(out, s.hidden_state ? 1 : 0);
    Put<uint64_t>(out, s.tokens.size());
    out.append(reinterpret_cast<const char*>(s.tokens.data()), s.tokens.size() * sizeof(int32_t));
  }
  return out;
}

absl::StatusOr<StepPlan> DecodePlan(const std::string& bytes) {
  Reader r(bytes);
  uint32_t magic = 0, kind = 0;
  uint64_t nseg = 0;
  StepPlan p;
  if (!r.Get(&magic) || magic != kMagic || !r.Get(&kind) || (kind != 1 && kind != 3 && kind != 4) || !r.Get(&p.seq) || !r.Get(&nseg)) {
    return absl::InternalError("malformed step plan header");
  }
  p.kind = static_cast<StepPlan::Kind>(kind);
  for (uint64_t i = 0; i < nseg; ++i) {
    PlanSegment s;
    uint8_t all = 0, hidden = 0;
    uint64_t n = 0;
    if (!r.Get(&s.seq) || !r.Get(&all) || !r.Get(&hidden) || !r.Get(&n) || n > r.left() / sizeof(int32_t)) {
      return absl::InternalError("malformed step plan segment");
    }
    s.all_logits = all != 0;
    s.hidden_state = hidden != 0;
    s.tokens.resize(n);
    for (uint64_t j = 0; j < n; ++j) r.Get(&s.tokens[j]);
    p.segments.push_back(std::move(s));
  }
  if (!r.done()) return absl::InternalError("trailing bytes after step plan");
  return p;
}

absl::Status SendPlan(Communicator& control, const StepPlan& plan) {
  std::string bytes = EncodePlan(plan);
  uint64_t size = bytes.size();
  SQA_RETURN_IF_ERROR(control.Broadcast(&size, sizeof(size), 0));
  return control.Broadcast(bytes.data(), bytes.size(), 0);
}

absl::StatusOr<StepPlan> ReceivePlan(Communicator& control, std::chrono::milliseconds timeout) {
  uint64_t size = 0;
  SQA_RETURN_IF_ERROR(control.Broadcast(&size, sizeof(size), 0, timeout));
  if (size > (uint64_t{1} << 32)) return absl::InternalError(absl::StrCat("step plan of ", size, " bytes"));
  std::string bytes(size, '\0');
  SQA_RETURN_IF_ERROR(control.Broadcast(bytes.data(), bytes.size(), 0));
  return DecodePlan(bytes);
}

}  // namespace sqa
