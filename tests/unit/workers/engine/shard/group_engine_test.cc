// Groups of P ranks (threads of this process, Gloo over loopback TCP) in heads and sequence mode
// give the single-rank engine's logits for every layout: prefill (every position), batched decode
// and a pass mixing decode with a new prompt. A rank that dies breaks the group with UNAVAILABLE.
// Every rank times its steps, its prefill attention and its exposed communication.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <future>
#include <map>
#include <thread>

#include "workers/engine/engine.h"
#include "workers/engine/model/mkmodel.h"

namespace sqa {
namespace {

namespace fs = std::filesystem;

// H = 16 splits every layout over 2 and 4 ranks, H = 12 over 3.
std::shared_ptr<const Model> GetModel(int64_t heads, const std::string& layout) {
  static std::map<std::string, std::shared_ptr<const Model>> cache;
  const std::string key = std::to_string(heads) + layout;
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  ModelConfig c;
  c.hidden_size = heads * 8;
  c.num_hidden_layers = 2;
  c.num_attention_heads = heads;
  c.head_dim = 8;
  c.intermediate_size = 192;
  c.vocab_size = 256;
  c.max_position_embeddings = 4096;
  c.rope_theta = 10000;
  EXPECT_TRUE(ApplyLayout(layout, &c).ok());
  MkModelOptions o;
  o.config = c;
  o.seed = 5;
  o.threads = 1;
  const fs::path dir = fs::path("/tmp") / ("sqa_group_test_" + std::to_string(::getpid())) / key;
  EXPECT_TRUE(WriteRandomModel(o, dir.string()).ok());
  auto m = Model::Load(dir.string());
  EXPECT_TRUE(m.ok()) << m.status();
  std::shared_ptr<const Model> sp = std::move(m).value();
  cache[key] = sp;
  return sp;
}

std::unique_ptr<Engine> MakeEngine(std::shared_ptr<const Model> model, GroupOptions group) {
  BackendOptions bo;
  bo.num_threads = 1;
  auto be = CreateBackend(bo);
  EXPECT_TRUE(be.ok());
  EngineOptions eo;
  eo.block_size = 8;
  eo.num_kv_blocks = 256;
  eo.max_chunk_tokens = 16;  // heads mode prefills in chunks; sequence mode in one pass
  eo.group = group;
  auto e = Engine::Create(std::move(model), std::move(be).value(), eo);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(e).value() : nullptr;
}

std::vector<int32_t> Tokens(int n, int salt) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back((i * 37 + salt * 11 + 3) % 256);
  return t;
}

// The scripted workload: two prompts prefilled (all logits), four batched decode steps, then one
// pass with a decode token of the first sequence plus a third prompt. Returns every logits row.
std::vector<float> RunScript(Engine& e) {
  std::vector<float> out;
  auto take = [&](const absl::StatusOr<Logits>& l) {
    EXPECT_TRUE(l.ok()) << l.status();
    if (l.ok()) out.insert(out.end(), l->data.begin(), l->data.end());
  };
  const SeqId a = e.NewSequence(), b = e.NewSequence();
  const std::vector<int32_t> pa = Tokens(37, 1), pb = Tokens(20, 2), pc = Tokens(15, 3);
  take(e.Prefill(a, pa, /*all_logits=*/true));
  take(e.Prefill(b, pb, true));
  for (int step = 0; step < 4; ++step) {
    const int32_t ta = (step * 13 + 5) % 256, tb = (step * 29 + 7) % 256;
    Engine::Segment s[2];
    s[0].seq = a;
    s[0].tokens = absl::MakeConstSpan(&ta, 1);
    s[1].seq = b;
    s[1].tokens = absl::MakeConstSpan(&tb, 1);
    take(e.Forward(s));
  }
  const SeqId c = e.NewSequence();
  const int32_t ta = 99;
  Engine::Segment s[2];
  s[0].seq = a;
  s[0].tokens = absl::MakeConstSpan(&ta, 1);
  s[1].seq = c;
  s[1].tokens = absl::MakeConstSpan(pc);
  s[1].all_logits = true;
  take(e.Forward(s));
  e.Release(b);
  return out;
}

void ExpectClose(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  double max_ref = 0, max_err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_ref = std::max(max_ref, std::abs(static_cast<double>(want[i])));
    max_err = std::max(max_err, std::abs(static_cast<double>(got[i]) - want[i]));
  }
  EXPECT_GT(max_ref, 0.1);
  EXPECT_LE(max_err / max_ref, 1e-5) << "max abs error " << max_err << " of " << max_ref;
}

void CheckGroup(ShardMode mode, int world, int64_t heads, const std::string& layout) {
  SCOPED_TRACE(testing::Message() << ShardModeName(mode) << " P=" << world << " " << layout);
  auto model = GetModel(heads, layout);
  auto single = MakeEngine(model, {});
  ASSERT_NE(single, nullptr);
  const std::vector<float> want = RunScript(*single);

  InProcessStore store;
  std::vector<float> got;
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.emplace_back([&, r] {
      GlooOptions go;
      go.rank = r;
      go.world_size = world;
      go.timeout = std::chrono::milliseconds(20000);
      auto comm = CreateGlooCommunicator(go, store);
      ASSERT_TRUE(comm.ok()) << comm.status();
      GroupOptions g;
      g.mode = mode;
      g.control = comm->get();
      auto e = MakeEngine(model, g);
      ASSERT_NE(e, nullptr);
      if (r == 0) {
        got = RunScript(*e);
        EXPECT_TRUE(e->StopGroup().ok());
      } else {
        absl::Status st = e->ServeFollower();
        EXPECT_TRUE(st.ok()) << st;
      }
    });
  }
  for (auto& t : ranks) t.join();
  ExpectClose(got, want);
}

const char* kLayouts[] = {"MHA", "GQA", "MQA", "SQA", "sSQA", "xSQA", "xSMQA", "rSQA"};

TEST(GroupEngineTest, HeadsModeEqualsSingleRank) {
  for (const char* layout : kLayouts) {
    CheckGroup(ShardMode::kHeads, 2, 16, layout);
    CheckGroup(ShardMode::kHeads, 3, 12, layout);
    CheckGroup(ShardMode::kHeads, 4, 16, layout);
  }
}

TEST(GroupEngineTest, SequenceModeEqualsSingleRank) {
  for (const char* layout : kLayouts) {
    CheckGroup(ShardMode::kSequence, 2, 16, layout);
    CheckGroup(ShardMode::kSequence, 3, 12, layout);
    CheckGroup(ShardMode::kSequence, 4, 16, layout);
  }
}

// Every rank's timings after the scripted workload: attention within the step time, exposed
// communication within the communicator's own collective seconds, and both non-zero.
TEST(GroupEngineTest, EveryRankTimesAttentionAndExposedCommunication) {
  for (ShardMode mode : {ShardMode::kHeads, ShardMode::kSequence}) {
    for (int world : {2, 3}) {
      SCOPED_TRACE(testing::Message() << ShardModeName(mode) << " P=" << world);
      auto model = GetModel(world == 3 ? 12 : 16, "SQA");
      InProcessStore store;
      std::vector<GroupTimings> timings(static_cast<size_t>(world));
      std::vector<double> comm_seconds(static_cast<size_t>(world));
      std::vector<std::thread> ranks;
      for (int r = 0; r < world; ++r) {
        ranks.emplace_back([&, r] {
          GlooOptions go;
          go.rank = r;
          go.world_size = world;
          go.timeout = std::chrono::milliseconds(20000);
          auto comm = CreateGlooCommunicator(go, store);
          ASSERT_TRUE(comm.ok()) << comm.status();
          GroupOptions g;
          g.mode = mode;
          g.control = comm->get();
          g.time_attention = true;
          auto e = MakeEngine(model, g);
          ASSERT_NE(e, nullptr);
          if (r == 0) {
            RunScript(*e);
            EXPECT_TRUE(e->StopGroup().ok());
          } else {
            EXPECT_TRUE(e->ServeFollower().ok());
          }
          timings[static_cast<size_t>(r)] = e->group_timings();
          const CollectiveStats& st = (*comm)->stats();
          comm_seconds[static_cast<size_t>(r)] =
              st.broadcast.seconds + st.all_reduce.seconds + st.all_gather.seconds + st.send_recv.seconds;
        });
      }
      for (auto& t : ranks) t.join();
      for (int r = 0; r < world; ++r) {
        SCOPED_TRACE(testing::Message() << "rank " << r);
        const GroupTimings& t = timings[static_cast<size_t>(r)];
        EXPECT_EQ(t.steps, timings[0].steps);  // followers run the leader's steps
        EXPECT_GT(t.step_seconds, 0);
        EXPECT_GT(t.attention_seconds, 0);
        EXPECT_LE(t.attention_seconds, t.step_seconds);
        EXPECT_GT(t.exposed_comm_seconds, 0);
        EXPECT_LE(t.exposed_comm_seconds, comm_seconds[static_cast<size_t>(r)]);
        EXPECT_LE(t.exposed_comm_seconds, t.step_seconds);
      }
    }
  }
  // Outside sequence mode the attention is timed only on request.
  auto plain = MakeEngine(GetModel(16, "SQA"), {});
  ASSERT_NE(plain, nullptr);
  RunScript(*plain);
  EXPECT_GT(plain->group_timings().steps, 0);
  EXPECT_EQ(plain->group_timings().attention_seconds, 0);
  EXPECT_EQ(plain->group_timings().exposed_comm_seconds, 0);
  GroupOptions timed;
  timed.time_attention = true;
  auto single = MakeEngine(GetModel(16, "SQA"), timed);
  ASSERT_NE(single, nullptr);
  RunScript(*single);
  EXPECT_GT(single->group_timings().attention_seconds, 0);
  EXPECT_LE(single->group_timings().attention_seconds, single->group_timings().step_seconds);
}

TEST(GroupEngineTest, DeadFollowerBreaksTheGroupWithUnavailable) {
  for (ShardMode mode : {ShardMode::kHeads, ShardMode::kSequence}) {
    auto model = GetModel(16, "SQA");
    InProcessStore store;
    std::promise<void> leader_joined;
    std::thread follower([&] {
      GlooOptions go;
      go.rank = 1;
      go.world_size = 2;
      go.timeout = std::chrono::milliseconds(2000);
      auto comm = CreateGlooCommunicator(go, store);
      EXPECT_TRUE(comm.ok());
      leader_joined.get_future().wait();
      // Dies once the group has formed: its connections close.
    });
    GlooOptions go;
    go.rank = 0;
    go.world_size = 2;
    go.timeout = std::chrono::milliseconds(2000);
    auto comm = CreateGlooCommunicator(go, store);
    leader_joined.set_value();
    follower.join();
    ASSERT_TRUE(comm.ok()) << comm.status();
    GroupOptions g;
    g.mode = mode;
    g.control = comm->get();
    auto e = MakeEngine(model, g);
    ASSERT_NE(e, nullptr);
    const SeqId s = e->NewSequence();
    const std::vector<int32_t> p = Tokens(10, 4);
    const auto t0 = std::chrono::steady_clock::now();
    auto l = e->Prefill(s, p, false);
    EXPECT_EQ(l.status().code(), absl::StatusCode::kUnavailable) << l.status();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
    EXPECT_FALSE(e->group_ok());
    EXPECT_EQ(e->Prefill(s, p, false).status().code(), absl::StatusCode::kUnavailable);
  }
}

TEST(GroupEngineTest, BadGroupConfigurationsAreRejected) {
  InProcessStore store;
  std::vector<std::unique_ptr<Communicator>> comms(3);
  std::vector<std::thread> ts;
  for (int r = 0; r < 3; ++r) {
    ts.emplace_back([&, r] {
      GlooOptions go;
      go.rank = r;
      go.world_size = 3;
      auto c = CreateGlooCommunicator(go, store);
      ASSERT_TRUE(c.ok());
      comms[static_cast<size_t>(r)] = std::move(c).value();
    });
  }
  for (auto& t : ts) t.join();
  BackendOptions bo;
  bo.num_threads = 1;
  EngineOptions eo;
  eo.group.control = comms[0].get();
  eo.group.mode = ShardMode::kHeads;  // 16 heads do not split over 3 ranks
  auto e = Engine::Create(GetModel(16, "MHA"), std::move(CreateBackend(bo)).value(), eo);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument) << e.status();
  eo.group.mode = ShardMode::kNone;  // several ranks need a mode
  e = Engine::Create(GetModel(16, "MHA"), std::move(CreateBackend(bo)).value(), eo);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument) << e.status();
}

}  // namespace
}  // namespace sqa
