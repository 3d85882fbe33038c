// sqa-cli: generate | encode | info | health against a router (or, with --service worker, a
// worker). Flag parsing and printing only; the calls are the sqa_client library.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "services/client/flag_names.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "services/client/client.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Server address host:port");
ABSL_FLAG(std::string, service, "inference", "inference (router) or worker (a worker directly)");
ABSL_FLAG(std::string, prompt_file, "", "File of token ids (whitespace, commas or a JSON array)");
ABSL_FLAG(std::string, prompt_tokens, "", "Token ids inline, e.g. 1,2,3");
ABSL_FLAG(int64_t, synthetic, 0, "Use a synthetic prompt of N pseudo-random tokens");
ABSL_FLAG(uint64_t, synthetic_seed, 1, "Seed of the synthetic prompt");
ABSL_FLAG(int, max_tokens, 16, "Tokens to generate");
ABSL_FLAG(double, temperature, 0.0, "0 = greedy");
ABSL_FLAG(int, top_k, 0, "0 = off");
ABSL_FLAG(double, top_p, 1.0, "(0, 1]");
ABSL_FLAG(uint64_t, seed, 0, "Sampling seed");
ABSL_FLAG(std::string, stop_tokens, "", "Comma-separated stop token ids");
ABSL_FLAG(std::string, session, "", "Session id (routing affinity)");
ABSL_FLAG(bool, logprobs, false, "Return per-token log-probabilities");
ABSL_FLAG(int64_t, deadline_ms, 0, "Call deadline in ms (0 = none)");
ABSL_FLAG(bool, json, false, "Print one JSON object instead of text");
ABSL_FLAG(bool, quiet, false, "generate: do not print tokens as they stream");
ABSL_FLAG(std::string, output, "logits", "encode: logits or hidden");
ABSL_FLAG(std::string, health_service, "", "health: service name ('' = whole server)");

namespace {

using sqa::client::InferenceClient;
namespace v1 = sqa::v1;

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "sqa-cli: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str());
  return 1;
}

absl::Time Deadline() {
  const int64_t ms = absl::GetFlag(FLAGS_deadline_ms);
  return ms > 0 ? absl::Now() + absl::Milliseconds(ms) : absl::InfiniteFuture();
}

absl::StatusOr<std::vector<int32_t>> Prompt(InferenceClient& client) {
  if (!absl::GetFlag(FLAGS_prompt_file).empty()) {
    return sqa::client::ReadTokenFile(absl::GetFlag(FLAGS_prompt_file));
  }
  if (!absl::GetFlag(FLAGS_prompt_tokens).empty()) {
    return sqa::client::ParseTokenList(absl::GetFlag(FLAGS_prompt_tokens));
  }
  const int64_t n = absl::GetFlag(FLAGS_synthetic);
  if (n > 0) {
    auto info = client.GetModelInfo();
    if (!info.ok()) return info.status();
    return sqa::client::SyntheticPrompt(n, info->vocab_size(), absl::GetFlag(FLAGS_synthetic_seed));
  }
  return absl::InvalidArgumentError("give a prompt: --prompt-file F, --prompt-tokens 1,2,3 or --synthetic N");
}

int Generate(InferenceClient& client) {
  auto prompt = Prompt(client);
  if (!prompt.ok()) return Fail(prompt.status());
  v1::GenerateRequest req;
  req.mutable_prompt_tokens()->Assign(prompt->begin(), prompt->end());
  req.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  req.mutable_sampling()->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  req.mutable_sampling()->set_top_k(absl::GetFlag(FLAGS_top_k));
  req.mutable_sampling()->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  req.mutable_sampling()->set_seed(absl::GetFlag(FLAGS_seed));
  req.set_return_logprobs(absl::GetFlag(FLAGS_logprobs));
  req.set_session_id(absl::GetFlag(FLAGS_session));
  if (!absl::GetFlag(FLAGS_stop_tokens).empty()) {
    auto stops = sqa::client::ParseTokenList(absl::GetFlag(FLAGS_stop_tokens));
    if (!stops.ok()) return Fail(stops.status());
    req.mutable_stop_tokens()->Assign(stops->begin(), stops->end());
  }
  const bool json = absl::GetFlag(FLAGS_json);
  const bool stream = !json && !absl::GetFlag(FLAGS_quiet);
  if (stream) {
    std::printf("prompt: %zu tokens; streaming up to %d tokens\n", prompt->size(), req.max_tokens());
    std::fflush(stdout);
  }
  auto on_response = [&](const v1::GenerateResponse& r) {
    if (stream) {
      for (int t : r.tokens()) std::printf("%d ", t);
      std::fflush(stdout);
    }
    return true;
  };
  sqa::client::GenerateResult partial;
  auto result = client.Generate(req, Deadline(), on_response, &partial);
  if (stream) std::printf("\n");
  if (!result.ok()) {
    if (!partial.tokens.empty()) {
      std::fprintf(stderr, "sqa-cli: %zu tokens arrived before the error\n", partial.tokens.size());
    }
    return Fail(result.status());
  }
  const auto& r = *result;
  const double decode_s = r.total_seconds - r.time_to_first_token_seconds;
  const double tps = r.tokens.size() > 1 && decode_s > 0 ? (r.tokens.size() - 1) / decode_s : 0.0;
  const double prefill_tps = r.time_to_first_token_seconds > 0 ? prompt->size() / r.time_to_first_token_seconds : 0.0;
  if (json) {
    nlohmann::json j;
    j["request_id"] = r.request_id;
    j["prompt_tokens"] = prompt->size();
    j["tokens"] = r.tokens;
    if (!r.logprobs.empty()) j["logprobs"] = r.logprobs;
    j["finish_reason"] = sqa::client::FinishReasonName(r.finish_reason);
    j["time_to_first_token_seconds"] = r.time_to_first_token_seconds;
    j["total_seconds"] = r.total_seconds;
    j["decode_tokens_per_second"] = tps;
    j["prefill_tokens_per_second"] = prefill_tps;
    j["usage"] = {{"prompt_tokens", r.usage.prompt_tokens()},
                  {"completion_tokens", r.usage.completion_tokens()},
                  {"time_to_first_token_seconds", r.usage.time_to_first_token_seconds()},
                  {"total_seconds", r.usage.total_seconds()}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("generated %zu tokens (finish: %s) | time to first token %.3f s (prefill %.0f tok/s) | "
                "decode %.1f tok/s | total %.3f s | request %s\n",
                r.tokens.size(), sqa::client::FinishReasonName(r.finish_reason),
                r.time_to_first_token_seconds, prefill_tps, tps, r.total_seconds, r.request_id.c_str());
  }
  return 0;
}

int Encode(InferenceClient& client) {
  auto prompt = Prompt(client);
  if (!prompt.ok()) return Fail(prompt.status());
  v1::EncodeRequest req;
  req.mutable_prompt_tokens()->Assign(prompt->begin(), prompt->end());
  const std::string output = absl::GetFlag(FLAGS_output);
  if (output == "hidden") {
    req.set_output(v1::EncodeRequest::OUTPUT_HIDDEN_STATE);
  } else if (output != "logits") {
    return Fail(absl::InvalidArgumentError("--output must be logits or hidden"));
  }
  const absl::Time start = absl::Now();
  auto r = client.Encode(req, Deadline());
  if (!r.ok()) return Fail(r.status());
  const double s = absl::ToDoubleSeconds(absl::Now() - start);
  int argmax = 0;
  for (int i = 1; i < r->values_size(); ++i) {
    if (r->values(i) > r->values(argmax)) argmax = i;
  }
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json j;
    j["prompt_tokens"] = prompt->size();
    j["values"] = std::vector<float>(r->values().begin(), r->values().end());
    j["argmax"] = argmax;
    j["seconds"] = s;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("encoded %zu tokens in %.3f s: %d %s values, argmax %d\n", prompt->size(), s,
                r->values_size(), output.c_str(), argmax);
  }
  return 0;
}

int Info(InferenceClient& client) {
  auto info = client.GetModelInfo();
  if (!info.ok()) return Fail(info.status());
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json j = {{"layout", info->layout()},
                        {"num_attention_heads", info->num_attention_heads()},
                        {"num_query_heads", info->num_query_heads()},
                        {"num_key_value_heads", info->num_key_value_heads()},
                        {"head_dim", info->head_dim()},
                        {"hidden_size", info->hidden_size()},
                        {"num_layers", info->num_layers()},
                        {"vocab_size", info->vocab_size()},
                        {"dtype", info->dtype()},
                        {"device", info->device()},
                        {"max_position_embeddings", info->max_position_embeddings()}};
    nlohmann::json pools = nlohmann::json::array();
    for (const auto& p : info->pools()) {
      pools.push_back({{"name", p.name()}, {"max_context_tokens", p.max_context_tokens()},
                       {"healthy_groups", p.healthy_groups()}, {"group_size", p.group_size()},
                       {"shard_mode", p.shard_mode()}});
    }
    j["pools"] = pools;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s", info->DebugString().c_str());
  }
  return 0;
}

int Health(InferenceClient& client) {
  auto serving = client.Health(absl::GetFlag(FLAGS_health_service));
  if (!serving.ok()) return Fail(serving.status());
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("{\"serving\":%s}\n", *serving ? "true" : "false");
  } else {
    std::printf("%s\n", *serving ? "SERVING" : "NOT_SERVING");
  }
  return *serving ? 0 : 3;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sqa-cli generate|encode|info|health --target host:port [--prompt-file F | --synthetic N]\n"
      "  [--max-tokens N] [--temperature T --top-k K --top-p P --seed S] [--stop-tokens a,b]\n"
      "  [--session ID] [--deadline-ms MS] [--json]");
  sqa::client::DashedFlagsToUnderscores(argc, argv);
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() != 2) {
    std::fprintf(stderr, "usage: sqa-cli generate|encode|info|health --target host:port ... (--help)\n");
    return 2;
  }
  const std::string cmd = positional[1];
  sqa::client::ClientOptions o;
  o.target = absl::GetFlag(FLAGS_target);
  o.service = absl::GetFlag(FLAGS_service);
  auto client = InferenceClient::Create(o);
  if (!client.ok()) return Fail(client.status());
  if (cmd == "generate") return Generate(**client);
  if (cmd == "encode") return Encode(**client);
  if (cmd == "info") return Info(**client);
  if (cmd == "health") return Health(**client);
  std::fprintf(stderr, "sqa-cli: unknown command '%s' (generate, encode, info, health)\n", cmd.c_str());
  return 2;
}
