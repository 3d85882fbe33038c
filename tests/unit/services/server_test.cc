#include "services/server.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <thread>

#include <grpcpp/grpcpp.h>

#include "services/port_file.h"
#include "sqa/v1/worker.grpc.pb.h"
#include "tests/unit/services/test_util.h"

namespace sqa {
namespace {

constexpr int kServing = 1;
constexpr int kNotServing = 2;

TEST(GrpcServer, BindsPortZeroWritesPortFileAndServesHealth) {
  sqa::v1::Worker::Service worker;  // every method UNIMPLEMENTED; enough to register a name
  ServerOptions opts;
  opts.port_file = ::testing::TempDir() + "/server_test." + std::to_string(::getpid()) + ".port";
  auto server = GrpcServer::Start(opts, {{&worker, sqa::v1::Worker::service_full_name()}});
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  EXPECT_GT(port, 0);
  auto from_file = ReadPortFile(opts.port_file);
  ASSERT_TRUE(from_file.ok());
  EXPECT_EQ(*from_file, port);
  EXPECT_EQ((*server)->address(), "127.0.0.1:" + std::to_string(port));

  auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
  // Not ready until the owner says so.
  auto h = testing::HealthCheck(channel, "");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, kNotServing);
  (*server)->SetServing(true);
  EXPECT_EQ(*testing::HealthCheck(channel, ""), kServing);
  EXPECT_EQ(*testing::HealthCheck(channel, "sqa.v1.Worker"), kServing);
  EXPECT_TRUE(absl::IsNotFound(testing::HealthCheck(channel, "no.such.Service").status()));
  (*server)->SetServing(false);
  EXPECT_EQ(*testing::HealthCheck(channel, "sqa.v1.Worker"), kNotServing);

  // Reflection lists the registered services.
  auto refl = testing::ReflectionListServices(channel);
  ASSERT_TRUE(refl.ok()) << refl.status();
  EXPECT_NE(refl->find("sqa.v1.Worker"), std::string::npos);
  EXPECT_NE(refl->find("grpc.health.v1.Health"), std::string::npos);

  // A registered but unimplemented method answers UNIMPLEMENTED (the service is really bound).
  auto stub = sqa::v1::Worker::NewStub(channel);
  grpc::ClientContext ctx;
  sqa::v1::LoadReport report;
  EXPECT_EQ(stub->GetLoad(&ctx, sqa::v1::GetLoadRequest(), &report).error_code(), grpc::StatusCode::UNIMPLEMENTED);

  std::thread waiter([&] { (*server)->Wait(); });
  (*server)->Shutdown(absl::Seconds(1));
  waiter.join();
  (*server)->Shutdown(absl::Seconds(1));  // idempotent
  std::remove(opts.port_file.c_str());
}

TEST(GrpcServer, PortInUseIsUnavailable) {
  auto first = GrpcServer::Start(ServerOptions(), {});
  ASSERT_TRUE(first.ok());
  ServerOptions opts;
  opts.port = (*first)->port();
  auto second = GrpcServer::Start(opts, {});
  EXPECT_TRUE(absl::IsUnavailable(second.status())) << second.status();
}

TEST(GrpcServer, BadOptions) {
  ServerOptions opts;
  opts.port = 70000;
  EXPECT_TRUE(absl::IsInvalidArgument(GrpcServer::Start(opts, {}).status()));
  opts.port = 0;
  opts.tls_cert_file = "/x.pem";
  EXPECT_TRUE(absl::IsInvalidArgument(GrpcServer::Start(opts, {}).status()));
  opts.tls_key_file = "/nonexistent.key";
  EXPECT_TRUE(absl::IsNotFound(GrpcServer::Start(opts, {}).status()));
}

}  // namespace
}  // namespace sqa
