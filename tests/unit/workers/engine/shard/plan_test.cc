#include "workers/engine/shard/plan.h"

#include <algorithm>
#include <set>

#include "gtest/gtest.h"

namespace sqa {
namespace {

ModelConfig Heads(int64_t h, int64_t hq, int64_t hkv) {
  ModelConfig c;
  c.num_attention_heads = h;
  c.num_query_heads = hq;
  c.num_key_value_heads = hkv;
  c.head_dim = 8;
  c.intermediate_size = 96 * 4;
  return c;
}

// For every rank and local head, the local mapping must pick the same query and KV heads as the
// global one: global head h uses query h % Hq and KV head h / (Ha / Hkv).
void CheckCovers(const ModelConfig& c, int world) {
  std::set<int64_t> heads;
  for (int r = 0; r < world; ++r) {
    auto s = PlanHeadShard(c, r, world);
    ASSERT_TRUE(s.ok()) << s.status();
    for (int64_t j = 0; j < s->ha_count; ++j) {
      const int64_t h = s->ha_begin + j;
      heads.insert(h);
      EXPECT_EQ(s->q_heads[static_cast<size_t>(j % s->hq_local)], h % c.num_query_heads) << "rank " << r << " head " << j;
      EXPECT_EQ(s->kv_begin + j / (s->ha_count / s->hkv_local), h / (c.attn_heads() / c.num_key_value_heads));
      EXPECT_EQ(static_cast<int64_t>(std::set<int64_t>(s->q_heads.begin(), s->q_heads.end()).size()), s->hq_local);
      EXPECT_LT(s->kv_begin + s->hkv_local - 1, c.num_key_value_heads);
    }
    EXPECT_EQ(s->inter_count * world, c.intermediate_size);
  }
  EXPECT_EQ(static_cast<int64_t>(heads.size()), c.attn_heads());
}

TEST(PlanTest, HeadShardsKeepTheSharingPatternForEveryLayout) {
  // H = 16 splits every layout over 2 and 4 ranks; H = 12 over 3 ranks.
  for (int64_t H : {int64_t{16}, int64_t{12}}) {
    const std::vector<std::pair<int64_t, int64_t>> layouts = {
        {H, H}, {H, H / 4}, {H, 1}, {H / 2, H / 4}, {H / 2, H / 2}, {H / 4, H / 4}, {H / 4, 1}, {H / 4, H / 2}};
    for (auto [hq, hkv] : layouts) {
      for (int world : H == 16 ? std::vector<int>{1, 2, 4} : std::vector<int>{3}) {
        SCOPED_TRACE(testing::Message() << "Hq=" << hq << " Hkv=" << hkv << " P=" << world);
        CheckCovers(Heads(H, hq, hkv), world);
      }
    }
  }
}

TEST(PlanTest, HeadShardRejectsIndivisibleCounts) {
  // 12 heads in 3 KV groups of 4 over 2 ranks: a rank would hold one and a half groups.
  EXPECT_EQ(PlanHeadShard(Heads(12, 12, 3), 0, 2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanHeadShard(Heads(8, 8, 8), 0, 3).status().code(), absl::StatusCode::kInvalidArgument);
  ModelConfig c = Heads(8, 8, 8);
  c.intermediate_size = 90;
  EXPECT_EQ(PlanHeadShard(c, 0, 4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanHeadShard(Heads(8, 8, 8), 2, 2).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PlanTest, ZigzagCoversEveryTokenOnceAndBalancesCausalWork) {
  for (int world : {1, 2, 3, 4}) {
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{64}, int64_t{1001}}) {
      ZigzagSplit z = PlanZigzag(n, world);
      std::vector<int> seen(static_cast<size_t>(n), 0);
      int64_t total = 0;
      for (int r = 0; r < world; ++r) {
        for (auto [b, e] : {z.first(r), z.second(r, world)}) {
          for (int64_t t = b; t < e; ++t) seen[static_cast<size_t>(t)]++;
        }
        total += z.tokens_of(r, world);
      }
      EXPECT_EQ(total, n);
      for (int s : seen) EXPECT_EQ(s, 1);
    }
  }
  // Causal work (sum of key counts of owned queries) is within 1% across ranks for long prompts.
  const int world = 4;
  ZigzagSplit z = PlanZigzag(100000, world);
  std::vector<double> work(world, 0);
  for (int r = 0; r < world; ++r)
    for (auto [b, e] : {z.first(r), z.second(r, world)})
      for (int64_t t = b; t < e; ++t) work[static_cast<size_t>(r)] += static_cast<double>(t + 1);
  for (int r = 1; r < world; ++r) EXPECT_NEAR(work[static_cast<size_t>(r)] / work[0], 1.0, 0.01);
}

TEST(PlanTest, ParsesModes) {
  EXPECT_EQ(*ParseShardMode("heads"), ShardMode::kHeads);
  EXPECT_EQ(*ParseShardMode("sequence"), ShardMode::kSequence);
  EXPECT_FALSE(ParseShardMode("rows").ok());
}

}  // namespace
}  // namespace sqa
