// KV block accounting: which block ids are free, per-sequence block tables, capacity. The bytes
// live in the backend's KvCacheStorage; this class only hands out ids. Not thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace sqa {

class BlockPool {
 public:
  BlockPool(int64_t num_blocks, int64_t block_size);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_used() const { return num_blocks_ - num_free(); }
  // Blocks needed to hold `tokens` tokens.
  int64_t BlocksFor(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // Takes `n` blocks, all or none: RESOURCE_EXHAUSTED (nothing taken) when fewer are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t n);
  // Returns blocks to the pool. Freeing a block that is not allocated is an invariant violation.
  void Free(const std::vector<int32_t>& blocks);

 private:
  int64_t num_blocks_;
  int64_t block_size_;
  std::vector<int32_t> free_;       // stack of free ids (lowest ids handed out first)
  std::vector<uint8_t> allocated_;  // per-block flag, for double-free checks
};

// The seam for a second tier (issue: KV tiers). A tier stores whole blocks by id; the engine's
// device pool is tier 0. Implementations: host pinned pool, and on CPU a separate arena.
class KvTier {
 public:
  virtual ~KvTier() = default;
  virtual int64_t capacity_blocks() const = 0;
  virtual int64_t used_blocks() const = 0;
};

}  // namespace sqa
