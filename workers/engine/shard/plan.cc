#include "workers/engine/shard/plan.h"

#include "absl/strings/str_cat.h"

namespace sqa {

absl::StatusOr<ShardMode> ParseShardMode(const std::string& s) {
  if (s == "none" || s.empty()) return ShardMode::kNone;
  if (s == "heads") return ShardMode::kHeads;
  if (s == "sequence") return ShardMode::kSequence;
  return absl::InvalidArgumentError(absl::StrCat("unknown shard mode '", s, "' (expected heads or sequence)"));
}

const char* ShardModeName(ShardMode m) {
  switch (m) {
    case ShardMode::kHeads: return "heads";
    case ShardMode::kSequence: return "sequence";
    default: return "none";
  }
}

absl::StatusOr<HeadShard> PlanHeadShard(const ModelConfig& c, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world) {
    return absl::InvalidArgumentError(absl::StrCat("invalid rank ", rank, " for a group of ", world));
  }
  const int64_t hq = c.num_query_heads, hkv = c.num_key_value_heads, ha = c.attn_heads();
  if (ha % world != 0) {
    return absl::InvalidArgumentError(absl::StrCat("heads mode needs the ", ha, " attention heads (max(Hq, Hkv)) to divide by the group size ", world));
  }
  if (c.intermediate_size % world != 0) {
    return absl::InvalidArgumentError(absl::StrCat("heads mode needs intermediate_size ", c.intermediate_size, " to divide by the group size ", world));
  }
  HeadShard s;
  s.ha_count = ha / world;
  s.ha_begin = rank * s.ha_count;
  // Query heads: h % hq over the owned range.
  if (s.ha_count >= hq) {
    if (s.ha_count % hq != 0) {
      return absl::InvalidArgumentError(absl::StrCat("cannot split ", ha, " heads over ", world, " ranks with ", hq, " query heads"));
    }
    s.hq_local = hq;
  } else {
    s.hq_local = s.ha_count;  // distinct heads, possibly wrapping around (rSQA)
  }
  for (int64_t j = 0; j < s.hq_local; ++j) s.q_heads.push_back((s.ha_begin + j) % hq);
  // KV heads: h / (ha / hkv) over the owned range.
  const int64_t group = ha / hkv;  // attention heads per KV head
  if (s.ha_count >= group) {
    if (s.ha_count % group != 0) {
      return absl::InvalidArgumentError(absl::StrCat("cannot split ", ha, " heads over ", world, " ranks with KV groups of ", group));
    }
    s.kv_begin = s.ha_begin / group;
    s.hkv_local = s.ha_count / group;
  } else {
    if (group % s.ha_count != 0) {
      return absl::InvalidArgumentError(absl::StrCat("cannot split KV groups of ", group, " heads over ", world, " ranks"));
    }
    s.kv_begin = s.ha_begin / group;  // one KV head, replicated on group / ha_count ranks
    s.hkv_local = 1;
  }
  s.inter_count = c.intermediate_size / world;
  s.inter_begin = rank * s.inter_count;
  return s;
}

ZigzagSplit PlanZigzag(int64_t n, int world) {
  ZigzagSplit z;
  const int chunks = 2 * world;
  z.bounds.resize(static_cast<size_t>(chunks) + 1);
  for (int i = 0; i <= chunks; ++i) z.bounds[static_cast<size_t>(i)] = n * i / chunks;
  return z;
}

}  // namespace sqa
