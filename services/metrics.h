// Prometheus metrics: one registry per process, exposed over HTTP (`/metrics`) by a pull exposer
// on --metrics-port. Families are declared once at start-up by each component (from
// ProcessRegistry()); label keys are constants (see kLabel* below). Names follow the Prometheus
// naming guide: sqa_router_* / sqa_worker_*, units in the name (_seconds, _bytes, _tokens, _total).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/status/statusor.h"

namespace prometheus {
class Exposer;
}

namespace sqa {

// Label keys shared by the services.
inline constexpr char kLabelOutcome[] = "outcome";  // ok, cancelled, deadline_exceeded, rejected, error, ...
inline constexpr char kLabelCode[] = "code";        // gRPC status code name, e.g. "RESOURCE_EXHAUSTED"
inline constexpr char kLabelPool[] = "pool";
inline constexpr char kLabelGroup[] = "group";
inline constexpr char kLabelTier[] = "tier";

// The process's registry (created on first use; thread-safe; lives until exit).
std::shared_ptr<prometheus::Registry> ProcessRegistry();

struct MetricsOptions {
  std::string host = "127.0.0.1";  // "0.0.0.0" to be scraped from other hosts
  int port = 0;                    // 0 = pick a free port; < 0 = no exposer
  std::string port_file;           // when set, the chosen port is written here (port_file.h format)
  int num_threads = 2;             // HTTP threads of the exposer
};

// The HTTP exposer serving `registry` at /metrics. Thread-safe after Start.
class MetricsServer {
 public:
  // UNAVAILABLE when the address cannot be bound; PERMISSION_DENIED when the port file cannot be
  // written. With options.port < 0 returns a server that exposes nothing (port() == -1).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const MetricsOptions& options, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsServer();  // stops serving (within ~20 ms)

  int port() const { return port_; }  // the bound port, -1 when disabled

 private:
  MetricsServer() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::string host_;
  int port_ = -1;
};

// Histogram bucket helpers. Upper bounds, strictly increasing.
// `count` bounds start, start*factor, ..., start*factor^(count-1).
prometheus::Histogram::BucketBoundaries ExponentialBuckets(double start, double factor, int count);
// `count` >= 2 bounds geometrically spaced from `min` to `max` inclusive.
prometheus::Histogram::BucketBoundaries ExponentialBucketsRange(double min, double max, int count);
// Latencies in seconds from 1 ms to 600 s (10 minutes): long-context prefill scale.
prometheus::Histogram::BucketBoundaries LatencyBucketsSeconds();
// Short latencies in seconds from 50 us to 10 s (per step / per token).
prometheus::Histogram::BucketBoundaries StepBucketsSeconds();
// Token counts 1 .. 1M (powers of two).
prometheus::Histogram::BucketBoundaries TokenCountBuckets();

}  // namespace sqa
