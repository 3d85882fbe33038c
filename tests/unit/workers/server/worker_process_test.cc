// The sqa-worker executable as a client sees it: started on port 0 with port files, serving health
// and a stream, and on SIGTERM draining (health NOT_SERVING, in-flight request completes) and exiting 0.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "services/port_file.h"
#include "sqa/v1/worker.grpc.pb.h"
#include "tests/unit/services/test_util.h"
#include "tests/unit/workers/server/test_model.h"

namespace sqa::worker {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Proc {
  pid_t pid = -1;
  int Wait() {
    int status = 0;
    waitpid(pid, &status, 0);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  ~Proc() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
};

Proc Spawn(const std::vector<std::string>& args, const std::string& log) {
  Proc p;
  p.pid = fork();
  if (p.pid == 0) {
    FILE* f = std::freopen(log.c_str(), "w", stderr);
    (void)f;
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  return p;
}

TEST(WorkerProcess, PortZeroStreamAndSigtermDrain) {
  const std::string dir = ::testing::TempDir() + "/worker_process_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string port_file = dir + "/grpc.port", metrics_file = dir + "/metrics.port", log = dir + "/log";
  Proc w = Spawn({SQA_WORKER_BIN, "--model", testing::TinyModel()->dir(), "--port", "0", "--port-file", port_file,
                  "--metrics-port", "0", "--metrics-port-file", metrics_file, "--device", "cpu", "--threads", "1",
                  "--kv-cache-mb", "8", "--block-size", "16", "--max-batch-tokens", "64", "--group", "t"},
                 log);
  auto port = WaitForPortFile(port_file, absl::Seconds(60));
  ASSERT_TRUE(port.ok()) << port.status() << "\n" << ReadAll(log);
  auto mport = WaitForPortFile(metrics_file, absl::Seconds(5));
  ASSERT_TRUE(mport.ok());
  EXPECT_EQ(ReadAll(port_file), std::to_string(*port) + "\n");
  EXPECT_NE(ReadAll(log).find("worker listening on 127.0.0.1:" + std::to_string(*port) + ", metrics on :" +
                              std::to_string(*mport)),
            std::string::npos)
      << ReadAll(log);

  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(*port), grpc::InsecureChannelCredentials());
  EXPECT_EQ(*sqa::testing::HealthCheck(channel, ""), 1);
  EXPECT_TRUE(sqa::testing::HttpGet("127.0.0.1", *mport, "/metrics").ok());
  auto stub = sqa::v1::Worker::NewStub(channel);

  // A long stream in flight when SIGTERM arrives still completes (drain), new work is refused.
  const auto prompt = testing::RandomPrompt(100, 1);
  sqa::v1::GenerateRequest req;
  req.mutable_prompt_tokens()->Assign(prompt.begin(), prompt.end());
  req.set_max_tokens(1500);
  grpc::ClientContext ctx;
  auto reader = stub->Generate(&ctx, req);
  sqa::v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  size_t tokens = msg.tokens_size();
  ASSERT_EQ(kill(w.pid, SIGTERM), 0);
  // Health turns NOT_SERVING while the stream is still running.
  bool saw_not_serving = false;
  for (int i = 0; i < 100 && !saw_not_serving; ++i) {
    auto h = sqa::testing::HealthCheck(channel, "");
    saw_not_serving = h.ok() && *h == 2;
    if (!saw_not_serving) absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_TRUE(saw_not_serving);
  sqa::v1::FinishReason reason = sqa::v1::FINISH_REASON_UNSPECIFIED;
  while (reader->Read(&msg)) {
    tokens += msg.tokens_size();
    if (msg.finish_reason() != sqa::v1::FINISH_REASON_UNSPECIFIED) reason = msg.finish_reason();
  }
  grpc::Status st = reader->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(tokens, 1500u);
  EXPECT_EQ(reason, sqa::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(w.Wait(), 0) << ReadAll(log);
  EXPECT_NE(ReadAll(log).find("worker stopped"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(WorkerProcess, BadFlagsExitWithUsage) {
  const std::string log = ::testing::TempDir() + "/worker_badflag_" + std::to_string(::getpid());
  Proc w = Spawn({SQA_WORKER_BIN, "--model", "/nonexistent", "--block-size", "zero"}, log);
  EXPECT_EQ(w.Wait(), 2);
  EXPECT_NE(ReadAll(log).find("--block-size"), std::string::npos);
  Proc m = Spawn({SQA_WORKER_BIN, "--model", "/nonexistent-model-dir"}, log);
  EXPECT_EQ(m.Wait(), 1);
  EXPECT_NE(ReadAll(log).find("nonexistent-model-dir"), std::string::npos) << ReadAll(log);
  std::remove(log.c_str());
}

}  // namespace
}  // namespace sqa::worker
