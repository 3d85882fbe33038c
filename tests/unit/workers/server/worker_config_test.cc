#include "workers/server/worker_config.h"

#include <gtest/gtest.h>

namespace sqa::worker {
namespace {

TEST(WorkerConfig, ParsesBothFlagForms) {
  auto c = ParseWorkerFlags({"--model", "/m", "--port=0", "--port-file", "/tmp/p", "--metrics-port", "-1",
                             "--device=cpu", "--threads", "2", "--kv-cache-mb", "64", "--block-size=32",
                             "--max-batch-tokens", "128", "--max-queued=3", "--group", "g1", "--host", "0.0.0.0"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_dir, "/m");
  EXPECT_EQ(c->port, 0);
  EXPECT_EQ(c->port_file, "/tmp/p");
  EXPECT_EQ(c->metrics_port, -1);
  EXPECT_EQ(c->device, "cpu");
  EXPECT_EQ(c->threads, 2);
  EXPECT_EQ(c->kv_cache_mb, 64);
  EXPECT_EQ(c->block_size, 32);
  EXPECT_EQ(c->max_batch_tokens, 128);
  EXPECT_EQ(c->max_queued, 3);
  EXPECT_EQ(c->group, "g1");
  EXPECT_EQ(c->metrics_host, "0.0.0.0");  // defaults to --host
}

TEST(WorkerConfig, ErrorsNameTheFlag) {
  auto e = ParseWorkerFlags({"--port", "0"});
  EXPECT_NE(e.status().message().find("--model"), std::string::npos);
  e = ParseWorkerFlags({"--model", "/m", "--port", "70000"});
  EXPECT_NE(e.status().message().find("--port"), std::string::npos);
  e = ParseWorkerFlags({"--model", "/m", "--device", "tpu"});
  EXPECT_NE(e.status().message().find("--device"), std::string::npos);
  e = ParseWorkerFlags({"--model", "/m", "--frobnicate", "1"});
  EXPECT_NE(e.status().message().find("unknown flag --frobnicate"), std::string::npos);
  e = ParseWorkerFlags({"--model"});
  EXPECT_NE(e.status().message().find("needs a value"), std::string::npos);
  e = ParseWorkerFlags({"--model", "/m", "--max-batch-tokens", "0"});
  EXPECT_TRUE(absl::IsInvalidArgument(e.status()));
  EXPECT_TRUE(absl::IsNotFound(ParseWorkerFlags({"--help"}).status()));
}

}  // namespace
}  // namespace sqa::worker
