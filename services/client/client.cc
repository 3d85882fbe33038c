#include "services/client/client.h"

#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/byte_buffer.h"
#include "services/grpc_status.h"

namespace sqa::client {
namespace {

void SetDeadline(grpc::ClientContext* ctx, absl::Time deadline) {
  if (deadline != absl::InfiniteFuture()) ctx->set_deadline(absl::ToChronoTime(deadline));
}

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// The health and reflection messages are tiny and Debian ships no generated stubs for them, so
// they are written and read as raw protobuf fields.
absl::StatusOr<std::string> RawUnary(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                                     const std::string& request, absl::Duration timeout) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, absl::Now() + timeout);
  grpc::Slice slice(request);
  grpc::ByteBuffer req(&slice, 1), resp;
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &req, &resp, [&](grpc::Status s) {
    status = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  if (!status.ok()) return FromGrpcStatus(status);
  return Flatten(resp);
}

}  // namespace

absl::StatusOr<std::unique_ptr<InferenceClient>> InferenceClient::Create(const ClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("--target host:port is required");
  if (options.service != "inference" && options.service != "worker") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown service '", options.service, "' (inference or worker)"));
  }
  std::unique_ptr<InferenceClient> c(new InferenceClient(options));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  c->channel_ = grpc::CreateCustomChannel(options.target, grpc::InsecureChannelCredentials(), args);
  c->inference_ = v1::Inference::NewStub(c->channel_);
  c->worker_ = v1::Worker::NewStub(c->channel_);
  return c;
}

absl::StatusOr<GenerateResult> InferenceClient::Generate(const v1::GenerateRequest& request,
                                                         absl::Time deadline,
                                                         const ResponseCallback& on_response,
                                                         GenerateResult* partial) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, deadline);
  const absl::Time start = absl::Now();
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      options_.service == "worker" ? worker_->Generate(&ctx, request)
                                   : inference_->Generate(&ctx, request);
  GenerateResult result;
  v1::GenerateResponse r;
  bool cancelled = false;
  while (reader->Read(&r)) {
    const double t = absl::ToDoubleSeconds(absl::Now() - start);
    if (result.tokens.empty() && r.tokens_size() > 0) result.time_to_first_token_seconds = t;
    for (int i = 0; i < r.tokens_size(); ++i) {
      result.tokens.push_back(r.tokens(i));
      result.token_arrival_seconds.push_back(t);
    }
    result.logprobs.insert(result.logprobs.end(), r.logprobs().begin(), r.logprobs().end());
    if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      result.finish_reason = r.finish_reason();
      result.usage = r.usage();
    }
    if (!r.request_id().empty()) result.request_id = r.request_id();
    if (on_response && !on_response(r)) {
      cancelled = true;
      ctx.TryCancel();
      break;
    }
  }
  grpc::Status status = reader->Finish();
  result.total_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (cancelled) status = grpc::Status(grpc::CANCELLED, "cancelled by the caller");
  if (!status.ok()) {
    if (partial) *partial = std::move(result);
    return FromGrpcStatus(status);
  }
  return result;
}

absl::StatusOr<v1::EncodeResponse> InferenceClient::Encode(const v1::EncodeRequest& request,
                                                           absl::Time deadline) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, deadline);
  v1::EncodeResponse response;
  grpc::Status s = options_.service == "worker" ? worker_->Encode(&ctx, request, &response)
                                                : inference_->Encode(&ctx, request, &response);
  if (!s.ok()) return FromGrpcStatus(s);
  return response;
}

absl::StatusOr<v1::ModelInfo> InferenceClient::GetModelInfo(absl::Duration timeout) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, absl::Now() + timeout);
  v1::GetModelInfoRequest request;
  v1::ModelInfo info;
  grpc::Status s = options_.service == "worker" ? worker_->GetModelInfo(&ctx, request, &info)
                                                : inference_->GetModelInfo(&ctx, request, &info);
  if (!s.ok()) return FromGrpcStatus(s);
  return info;
}

absl::StatusOr<bool> InferenceClient::Health(const std::string& service, absl::Duration timeout) {
  // HealthCheckRequest { string service = 1; }
  std::string req;
  if (!service.empty()) {
    req.push_back(0x0a);
    req.push_back(static_cast<char>(service.size()));  // names are short (< 128 bytes)
    req += service;
  }
  auto resp = RawUnary(channel_, "/grpc.health.v1.Health/Check", req, timeout);
  if (!resp.ok()) return resp.status();
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromString(*resp)) return absl::InternalError("unparsable health response");
  for (int i = 0; i < fields.field_count(); ++i) {
    const auto& f = fields.field(i);
    if (f.number() == 1 && f.type() == google::protobuf::UnknownField::TYPE_VARINT) {
      return f.varint() == 1;  // SERVING
    }
  }
  return false;  // status absent = UNKNOWN (0)
}

absl::StatusOr<std::vector<std::string>> InferenceClient::ListServices(absl::Duration timeout) {
  grpc::GenericStub stub(channel_);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, absl::Now() + timeout);
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok;
  auto step = [&](void* want) -> bool {
    if (!cq.Next(&tag, &ok)) return false;
    return tag == want && ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  if (!step(reinterpret_cast<void*>(1))) return absl::UnavailableError("reflection: cannot start the call");
  // ServerReflectionRequest { string list_services = 7; } with value "".
  std::string req = {0x3a, 0x00};
  grpc::Slice slice(req);
  grpc::ByteBuffer out(&slice, 1), in;
  call->WriteLast(out, grpc::WriteOptions(), reinterpret_cast<void*>(2));
  if (!step(reinterpret_cast<void*>(2))) return absl::UnavailableError("reflection: write failed");
  call->Read(&in, reinterpret_cast<void*>(3));
  const bool got = step(reinterpret_cast<void*>(3));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(4));
  step(reinterpret_cast<void*>(4));
  if (!status.ok()) return FromGrpcStatus(status);
  if (!got) return absl::InternalError("reflection: no response");
  // ServerReflectionResponse { ListServiceResponse list_services_response = 6; }
  // ListServiceResponse { repeated ServiceResponse service = 1; } ServiceResponse { string name = 1; }
  google::protobuf::UnknownFieldSet top;
  if (!top.ParseFromString(Flatten(in))) return absl::InternalError("reflection: unparsable response");
  std::vector<std::string> names;
  for (int i = 0; i < top.field_count(); ++i) {
    const auto& f = top.field(i);
    if (f.number() != 6 || f.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) continue;
    google::protobuf::UnknownFieldSet list;
    if (!list.ParseFromString(f.length_delimited())) continue;
    for (int j = 0; j < list.field_count(); ++j) {
      if (list.field(j).number() != 1) continue;
      google::protobuf::UnknownFieldSet svc;
      if (!svc.ParseFromString(list.field(j).length_delimited())) continue;
      for (int k = 0; k < svc.field_count(); ++k) {
        if (svc.field(k).number() == 1) names.push_back(svc.field(k).length_delimited());
      }
    }
  }
  return names;
}

absl::StatusOr<std::vector<int32_t>> ParseTokenList(const std::string& text) {
  std::vector<int32_t> out;
  size_t i = 0;
  while (i < text.size()) {
    if ((text[i] >= '0' && text[i] <= '9') || (text[i] == '-' && i + 1 < text.size() &&
                                               text[i + 1] >= '0' && text[i + 1] <= '9')) {
      size_t j = i + 1;
      while (j < text.size() && text[j] >= '0' && text[j] <= '9') ++j;
      int32_t v = 0;
      if (!absl::SimpleAtoi(text.substr(i, j - i), &v)) {
        return absl::InvalidArgumentError(absl::StrCat("token id '", text.substr(i, j - i), "' is out of range"));
      }
      out.push_back(v);
      i = j;
    } else {
      ++i;
    }
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> ReadTokenFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read prompt file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  auto tokens = ParseTokenList(ss.str());
  if (tokens.ok() && tokens->empty()) {
    return absl::InvalidArgumentError(absl::StrCat("prompt file ", path, " holds no token ids"));
  }
  return tokens;
}

std::vector<int32_t> SyntheticPrompt(int64_t n, int32_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 1);
  std::uniform_int_distribution<int32_t> dist(0, std::max(1, vocab) - 1);
  std::vector<int32_t> out(n);
  for (auto& t : out) t = dist(rng);
  return out;
}

const char* FinishReasonName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_STOP: return "stop";
    case v1::FINISH_REASON_CONTEXT: return "context";
    default: return "unspecified";
  }
}

}  // namespace sqa::client
