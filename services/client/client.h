// Client library for sqa-serve: a thin, blocking wrapper over the sqa.v1.Inference stub (or, for
// benchmarks that bypass the router, the identical calls of sqa.v1.Worker), plus grpc.health.v1
// and server reflection. One InferenceClient may be used from many threads at once.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "sqa/v1/inference.grpc.pb.h"
#include "sqa/v1/worker.grpc.pb.h"

namespace sqa::client {

struct ClientOptions {
  std::string target;  // host:port
  // "inference" (the router's public API) or "worker" (a worker directly, for benchmarks).
  std::string service = "inference";
  int max_message_bytes = 64 << 20;
};

struct GenerateResult {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;        // as reported by the server
  std::string request_id;
  // Measured by the client, from the call's start.
  double time_to_first_token_seconds = 0;
  double total_seconds = 0;
  std::vector<double> token_arrival_seconds;  // one per token
};

// Called for each streamed message; return false to cancel the call (Generate then returns
// CANCELLED with the tokens received so far in `partial`, when given).
using ResponseCallback = std::function<bool(const v1::GenerateResponse&)>;

class InferenceClient {
 public:
  // INVALID_ARGUMENT for an empty target or an unknown service. Connects lazily.
  static absl::StatusOr<std::unique_ptr<InferenceClient>> Create(const ClientOptions& options);

  // Streams a generation. `deadline` = absl::InfiniteFuture() for none. On error the tokens
  // received before it are in `*partial` when given.
  absl::StatusOr<GenerateResult> Generate(const v1::GenerateRequest& request, absl::Time deadline,
                                          const ResponseCallback& on_response = nullptr,
                                          GenerateResult* partial = nullptr);
  absl::StatusOr<v1::EncodeResponse> Encode(const v1::EncodeRequest& request, absl::Time deadline);
  absl::StatusOr<v1::ModelInfo> GetModelInfo(absl::Duration timeout = absl::Seconds(10));
  // grpc.health.v1 Check: true when SERVING. `service` "" = the whole server.
  absl::StatusOr<bool> Health(const std::string& service = "", absl::Duration timeout = absl::Seconds(5));
  // Service names listed by server reflection (grpc.reflection.v1alpha ListServices).
  absl::StatusOr<std::vector<std::string>> ListServices(absl::Duration timeout = absl::Seconds(5));

  const std::string& target() const { return options_.target; }

 private:
  explicit InferenceClient(const ClientOptions& options) : options_(options) {}
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> inference_;
  std::unique_ptr<v1::Worker::Stub> worker_;
};

// Prompt helpers for the tools.
// All integers found in the text (JSON arrays, commas, whitespace all work), as token ids.
absl::StatusOr<std::vector<int32_t>> ParseTokenList(const std::string& text);
absl::StatusOr<std::vector<int32_t>> ReadTokenFile(const std::string& path);
// `n` pseudo-random token ids in [0, vocab), fixed by `seed`.
std::vector<int32_t> SyntheticPrompt(int64_t n, int32_t vocab, uint64_t seed);
const char* FinishReasonName(v1::FinishReason r);

}  // namespace sqa::client
