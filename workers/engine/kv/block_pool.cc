#include "workers/engine/kv/block_pool.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "services/common/status.h"

namespace sqa {

BlockPool::BlockPool(int64_t num_blocks, int64_t block_size)
    : num_blocks_(num_blocks < 0 ? 0 : num_blocks), block_size_(block_size < 1 ? 1 : block_size) {
  free_.reserve(static_cast<size_t>(num_blocks_));
  // A stack: push highest ids first so that the lowest ids are handed out first.
  for (int64_t i = num_blocks_ - 1; i >= 0; --i) free_.push_back(static_cast<int32_t>(i));
  allocated_.assign(static_cast<size_t>(num_blocks_), 0);
}

absl::StatusOr<std::vector<int32_t>> BlockPool::Allocate(int64_t n) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("cannot allocate ", n, " KV blocks"));
  if (n > num_free()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache full: need ", n, " blocks, ", num_free(), " free of ", num_blocks_));
  }
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    int32_t id = free_.back();
    free_.pop_back();
    allocated_[static_cast<size_t>(id)] = 1;
    out.push_back(id);
  }
  return out;
}

void BlockPool::Free(const std::vector<int32_t>& blocks) {
  for (int32_t id : blocks) {
    SQA_CHECK(id >= 0 && id < num_blocks_);
    SQA_CHECK(allocated_[static_cast<size_t>(id)] == 1);  // double free or never allocated
    allocated_[static_cast<size_t>(id)] = 0;
    free_.push_back(id);
  }
}

}  // namespace sqa
