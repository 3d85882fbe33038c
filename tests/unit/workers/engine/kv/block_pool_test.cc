// BlockPool: all-or-none allocation, accounting, id reuse and double-free detection.
#include "workers/engine/kv/block_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

namespace sqa {
namespace {

TEST(BlockPoolTest, HandsOutLowestIdsFirstAndCounts) {
  BlockPool pool(8, 16);
  EXPECT_EQ(pool.num_blocks(), 8);
  EXPECT_EQ(pool.block_size(), 16);
  EXPECT_EQ(pool.num_free(), 8);
  auto a = pool.Allocate(3);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(pool.num_free(), 5);
  EXPECT_EQ(pool.num_used(), 3);
  auto b = pool.Allocate(0);
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(b->empty());
  EXPECT_EQ(pool.num_free(), 5);
}

TEST(BlockPoolTest, BlocksFor) {
  BlockPool pool(4, 16);
  EXPECT_EQ(pool.BlocksFor(0), 0);
  EXPECT_EQ(pool.BlocksFor(1), 1);
  EXPECT_EQ(pool.BlocksFor(16), 1);
  EXPECT_EQ(pool.BlocksFor(17), 2);
}

TEST(BlockPoolTest, AllOrNone) {
  BlockPool pool(5, 4);
  auto a = pool.Allocate(4);
  ASSERT_TRUE(a.ok());
  auto b = pool.Allocate(2);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(b.status().message().find("need 2 blocks, 1 free of 5"), std::string::npos) << b.status();
  EXPECT_EQ(pool.num_free(), 1);  // nothing taken
  auto c = pool.Allocate(1);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(pool.num_free(), 0);
  EXPECT_FALSE(pool.Allocate(1).ok());
  EXPECT_FALSE(pool.Allocate(-1).ok());
}

TEST(BlockPoolTest, FreeReturnsBlocksAndIdsStayUnique) {
  BlockPool pool(6, 8);
  auto a = pool.Allocate(3);
  auto b = pool.Allocate(3);
  ASSERT_TRUE(a.ok() && b.ok());
  pool.Free(*a);
  EXPECT_EQ(pool.num_free(), 3);
  auto c = pool.Allocate(3);
  ASSERT_TRUE(c.ok());
  std::set<int32_t> ids(b->begin(), b->end());
  for (int32_t id : *c) EXPECT_TRUE(ids.insert(id).second) << "block " << id << " handed out twice";
  EXPECT_EQ(ids.size(), 6u);
  pool.Free(*b);
  pool.Free(*c);
  EXPECT_EQ(pool.num_free(), 6);
  EXPECT_EQ(pool.num_used(), 0);
}

TEST(BlockPoolDeathTest, DoubleFreeIsCaught) {
  BlockPool pool(4, 8);
  auto a = pool.Allocate(2);
  ASSERT_TRUE(a.ok());
  pool.Free(*a);
  EXPECT_DEATH(pool.Free(*a), "allocated_");
}

TEST(BlockPoolDeathTest, FreeingUnknownIdIsCaught) {
  BlockPool pool(4, 8);
  EXPECT_DEATH(pool.Free({7}), "num_blocks_");
  EXPECT_DEATH(pool.Free({1}), "allocated_");  // in range but never allocated
}

}  // namespace
}  // namespace sqa
