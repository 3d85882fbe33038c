#include "services/server.h"

#include <chrono>
#include <fstream>
#include <sstream>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "services/common/log.h"
#include "services/port_file.h"

namespace sqa {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", what, " file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string HostPort(const std::string& host, int port) {
  // IPv6 literals need brackets.
  if (host.find(':') != std::string::npos && host.front() != '[') return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

}  // namespace

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(const ServerOptions& options,
                                                              const std::vector<ServiceEntry>& services) {
  if (options.port < 0 || options.port > 65535)
    return absl::InvalidArgumentError(absl::StrCat("port ", options.port, " is outside [0, 65535]"));
  if (options.max_message_bytes <= 0)
    return absl::InvalidArgumentError("max_message_bytes must be positive");
  if (options.tls_cert_file.empty() != options.tls_key_file.empty())
    return absl::InvalidArgumentError("TLS needs both a certificate file and a key file");
  for (const ServiceEntry& s : services)
    if (s.service == nullptr || s.full_name.empty())
      return absl::InvalidArgumentError("every service needs an object and its full proto name");

  std::shared_ptr<grpc::ServerCredentials> creds;
  if (!options.tls_cert_file.empty()) {
    std::string cert, key;
    {
      auto c = ReadFile(options.tls_cert_file, "TLS certificate");
      if (!c.ok()) return c.status();
      cert = *std::move(c);
      auto k = ReadFile(options.tls_key_file, "TLS key");
      if (!k.ok()) return k.status();
      key = *std::move(k);
    }
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({key, cert});
    creds = grpc::SslServerCredentials(ssl);
  } else {
    creds = grpc::InsecureServerCredentials();
  }

  // Both are process-wide switches read by the next ServerBuilder.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  std::unique_ptr<GrpcServer> self(new GrpcServer());
  self->host_ = options.host;
  grpc::ServerBuilder builder;
  int selected_port = 0;
  const std::string addr = HostPort(options.host, options.port);
  builder.AddListeningPort(addr, creds, &selected_port);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, options.keepalive.time_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, options.keepalive.timeout_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, options.keepalive.permit_without_calls ? 1 : 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             options.keepalive.min_client_ping_interval_ms);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Without this a second process could bind the same port (SO_REUSEPORT) and share traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  for (const ServiceEntry& s : services) {
    builder.RegisterService(s.service);
    self->names_.push_back(s.full_name);
  }
  self->server_ = builder.BuildAndStart();
  if (self->server_ == nullptr || selected_port == 0)
    return absl::UnavailableError(absl::StrCat("cannot listen on ", addr,
                                               " (address in use, or host not local?)"));
  self->port_ = selected_port;
  // Health starts NOT_SERVING: readiness is the owner's call.
  self->SetServing(false);
  if (!options.port_file.empty()) {
    absl::Status st = WritePortFile(options.port_file, selected_port);
    if (!st.ok()) {
      self->Shutdown(absl::ZeroDuration());
      return st;
    }
  }
  return self;
}

GrpcServer::~GrpcServer() { Shutdown(absl::ZeroDuration()); }

std::string GrpcServer::address() const { return HostPort(host_, port_); }

void GrpcServer::SetServing(bool serving) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  serving_ = serving;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus(serving);  // overall ("") status
  for (const std::string& name : names_) health->SetServingStatus(name, serving);
}

bool GrpcServer::serving() const {
  absl::MutexLock lock(&mu_);
  return serving_;
}

void GrpcServer::Shutdown(absl::Duration grace) {
  {
    absl::MutexLock lock(&mu_);
    if (server_ == nullptr) return;
    if (shut_down_) {  // another thread is shutting down: wait for it to finish
      mu_.Await(absl::Condition(&stopped_));
      return;
    }
    shut_down_ = true;
    serving_ = false;
    // Ends Watch streams and answers NOT_SERVING from now on.
    if (auto* health = server_->GetHealthCheckService()) health->Shutdown();
  }
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::duration_cast<std::chrono::system_clock::duration>(absl::ToChronoNanoseconds(grace)));
  absl::MutexLock lock(&mu_);
  stopped_ = true;
}

void GrpcServer::Wait() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(&stopped_));
}

}  // namespace sqa
