// How a group of P ranks divides one model replica (ARCHITECTURE.md §4). Pure functions of the
// model config, rank and world size; every rank computes the same plan without talking.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "workers/engine/model/config.h"

namespace sqa {

enum class ShardMode { kNone, kHeads, kSequence };
absl::StatusOr<ShardMode> ParseShardMode(const std::string& s);  // "none", "heads", "sequence"
const char* ShardModeName(ShardMode m);

// `heads` mode (tensor parallel): rank r computes attention heads [ha_begin, ha_begin + ha_count)
// of the Ha = max(Hq, Hkv) heads, with the query and KV heads they read (KV heads are replicated
// when P > Hkv), and MLP columns [inter_begin, inter_begin + inter_count). The local attention
// keeps the global head convention: local head j uses local query head j % hq_local and local KV
// head j / (ha_count / hkv_local).
struct HeadShard {
  int64_t ha_begin = 0, ha_count = 0;
  std::vector<int64_t> q_heads;         // global ids of the local query heads, in local order
  int64_t hq_local = 0;
  int64_t kv_begin = 0, hkv_local = 0;  // KV heads [kv_begin, kv_begin + hkv_local)
  int64_t inter_begin = 0, inter_count = 0;
};
// INVALID_ARGUMENT when Ha or intermediate_size is not divisible by P, or the local heads cannot
// keep the sharing pattern (e.g. a rank would need a wrapped range of query heads).
absl::StatusOr<HeadShard> PlanHeadShard(const ModelConfig& config, int rank, int world);

// `sequence` mode (context parallel): a prefill of n tokens is cut into 2P chunks, chunk i covering
// [bounds[i], bounds[i+1]); rank r owns chunks r and 2P-1-r, so causal work is balanced.
struct ZigzagSplit {
  std::vector<int64_t> bounds;  // 2P + 1 entries, bounds[0] = 0, bounds[2P] = n
  // The (begin, end) token ranges rank r owns, in position order.
  std::pair<int64_t, int64_t> first(int rank) const { return {bounds[rank], bounds[rank + 1]}; }
  std::pair<int64_t, int64_t> second(int rank, int world) const {
    const int c = 2 * world - 1 - rank;
    return {bounds[c], bounds[c + 1]};
  }
  int64_t tokens_of(int rank, int world) const {
    auto a = first(rank);
    auto b = second(rank, world);
    return (a.second - a.first) + (b.second - b.first);
  }
};
ZigzagSplit PlanZigzag(int64_t n, int world);

// Decode tokens in `sequence` mode are stored round-robin by block: the token at position p lives
// on rank (p / block_size) % P.
inline int DecodeOwner(int64_t position, int64_t block_size, int world) {
  return static_cast<int>((position / block_size) % world);
}

}  // namespace sqa
