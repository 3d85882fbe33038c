// gRPC server set-up shared by the router and the workers: option struct (address, message size,
// keepalive, optional TLS, port file), the standard grpc.health.v1 service driven by real
// readiness, server reflection, and binding port 0 with the chosen port reported back.
//
// Usage:
//   sqa::ServerOptions opts; opts.port = 0; opts.port_file = "/tmp/w.port";
//   auto server = sqa::GrpcServer::Start(opts, {{&my_service, sqa::v1::Worker::service_full_name()}});
//   ... load model ...; (*server)->SetServing(true);   // health: SERVING
//   ... on drain: (*server)->SetServing(false);        // health: NOT_SERVING, RPCs still served
//   (*server)->Shutdown(absl::Seconds(5));
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/server.h>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace sqa {

struct KeepaliveOptions {
  int time_ms = 30'000;               // server pings an idle connection after this long
  int timeout_ms = 10'000;            // and closes it when the ping is not acked within this
  bool permit_without_calls = true;   // pings on connections with no active RPC
  int min_client_ping_interval_ms = 5'000;  // clients pinging more often than this get GOAWAY
};

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;                              // 0 = pick a free port (see GrpcServer::port())
  int max_message_bytes = 64 * 1024 * 1024;  // receive and send limit per message
  KeepaliveOptions keepalive;
  std::string port_file;                     // when set, the chosen port is written here (port_file.h)
  // TLS: both set = TLS with these PEM files; both empty = insecure (loopback, in-cluster mTLS mesh).
  std::string tls_cert_file;
  std::string tls_key_file;
};

// A service to register plus its full proto name ("sqa.v1.Worker"), used as its health-check name.
// Generated services expose the name as `sqa::v1::Worker::service_full_name()`.
struct ServiceEntry {
  grpc::Service* service = nullptr;  // not owned; must outlive the GrpcServer
  std::string full_name;
};

class GrpcServer {
 public:
  // Builds, binds and starts. Health starts NOT_SERVING for "" and every named service; call
  // SetServing(true) once the process is really ready. Errors: INVALID_ARGUMENT (bad options),
  // UNAVAILABLE (cannot bind), NOT_FOUND (TLS files), PERMISSION_DENIED (port file).
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(const ServerOptions& options,
                                                           const std::vector<ServiceEntry>& services);
  ~GrpcServer();  // Shutdown(0) if not shut down yet

  int port() const { return port_; }
  std::string address() const;  // "host:port" with the chosen port

  // Readiness -> grpc.health.v1: SERVING or NOT_SERVING for "" (overall) and every registered
  // service name. Thread-safe.
  void SetServing(bool serving);
  bool serving() const;

  // Health NOT_SERVING, then stops accepting RPCs and waits up to `grace` for running ones before
  // cancelling them. Idempotent; thread-safe. Blocks until the server has stopped.
  void Shutdown(absl::Duration grace);
  // Blocks until Shutdown() (called from another thread, e.g. a signal watcher) has finished.
  void Wait();

  grpc::Server* grpc_server() { return server_.get(); }

 private:
  GrpcServer() = default;
  std::unique_ptr<grpc::Server> server_;
  std::string host_;
  int port_ = 0;
  std::vector<std::string> names_;
  mutable absl::Mutex mu_;
  bool serving_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;  // Shutdown() started
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;    // Shutdown() finished
};

}  // namespace sqa
