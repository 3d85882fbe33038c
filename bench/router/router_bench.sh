#!/usr/bin/env bash
# Router overhead on loopback: one sqa-worker with a tiny model, one sqa-router in front of it;
# sqa-load runs the same load against the worker directly (sqa.v1.Worker) and through the router
# (sqa.v1.Inference). Prints p50/p99 time to first token and end-to-end latency and requests/s
# for both and the router's added latency; writes bench/results/router.md and router.json.
#
# usage: bench/router/router_bench.sh [BUILD_DIR]      (default: build)
# env:   REQUESTS (default 400), CONCURRENCY (default 1), PROMPT (default 16), MAX_TOKENS (default 8),
#        ROUNDS (default 3: direct and router alternate, the median round is reported)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
REQUESTS=${REQUESTS:-400}
CONCURRENCY=${CONCURRENCY:-1}
PROMPT=${PROMPT:-16}
MAX_TOKENS=${MAX_TOKENS:-8}
ROUNDS=${ROUNDS:-3}
BIN="$BUILD/bin"
for b in sqa-mkmodel sqa-worker sqa-router sqa-load; do
  [ -x "$BIN/$b" ] || { echo "router_bench: $BIN/$b not found; build it first" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/sqa-router-bench-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
wait_port() {  # file
  for _ in $(seq 1 600); do [ -s "$1" ] && { cat "$1"; return 0; }; sleep 0.1; done
  echo "router_bench: timed out waiting for $1" >&2; return 1
}

"$BIN/sqa-mkmodel" --preset tiny --layout SQA --out "$WORK/model" > "$WORK/mkmodel.log"
"$BIN/sqa-worker" --model "$WORK/model" --device cpu --threads 1 --port 0 --port-file "$WORK/w.port" \
  --metrics-port -1 > "$WORK/worker.log" 2>&1 &
PIDS+=($!)
WPORT=$(wait_port "$WORK/w.port")
"$BIN/sqa-router" --workers "127.0.0.1:$WPORT" --host 127.0.0.1 --port 0 --port-file "$WORK/r.port" \
  --metrics-port -1 --health-interval-ms 1000 > "$WORK/router.log" 2>&1 &
PIDS+=($!)
RPORT=$(wait_port "$WORK/r.port")
# Until the router has seen the worker healthy.
for _ in $(seq 1 100); do
  "$BIN/sqa-cli" health --target "127.0.0.1:$RPORT" >/dev/null 2>&1 && break
  sleep 0.1
done

LOAD=(--concurrency "$CONCURRENCY" --requests "$REQUESTS" --prompt-tokens "$PROMPT"
      --max-tokens "$MAX_TOKENS" --warmup 20 --json)
for r in $(seq 1 "$ROUNDS"); do
  "$BIN/sqa-load" --target "127.0.0.1:$WPORT" --service worker "${LOAD[@]}" > "$WORK/direct.$r.json"
  "$BIN/sqa-load" --target "127.0.0.1:$RPORT" --service inference "${LOAD[@]}" > "$WORK/router.$r.json"
done

mkdir -p bench/results
/usr/bin/python3 - "$WORK" "$ROUNDS" <<'PY'
import json, sys, statistics, platform, os, datetime
work, rounds = sys.argv[1], int(sys.argv[2])
def load(kind):
    return [json.load(open(f"{work}/{kind}.{r}.json")) for r in range(1, rounds + 1)]
direct, router = load("direct"), load("router")
def med(runs, metric, q):
    return statistics.median(r[metric][q] for r in runs)
def medv(runs, key):
    return statistics.median(r[key] for r in runs)
rows = []
for metric, label in [("time_to_first_token_seconds", "TTFT"), ("e2e_latency_seconds", "end-to-end"),
                      ("inter_token_latency_seconds", "inter-token")]:
    for q in ("p50", "p99"):
        d, r = med(direct, metric, q) * 1e3, med(router, metric, q) * 1e3
        rows.append((f"{label} {q} (ms)", d, r, r - d))
rps_d, rps_r = medv(direct, "requests_per_second"), medv(router, "requests_per_second")
cfg = direct[0]
result = {
    "date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"),
    "host": platform.node(), "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
    "concurrency": cfg["concurrency"], "prompt_tokens": cfg["prompt_tokens"], "max_tokens": cfg["max_tokens"],
    "requests_per_round": cfg["completed"] + cfg["failed"], "rounds": rounds,
    "failed": {"direct": sum(r["failed"] for r in direct), "router": sum(r["failed"] for r in router)},
    "rows": [{"metric": m, "direct_ms": d, "router_ms": r, "added_ms": a} for m, d, r, a in rows],
    "requests_per_second": {"direct": rps_d, "router": rps_r},
    "raw": {"direct": direct, "router": router},
}
json.dump(result, open("bench/results/router.json", "w"), indent=1)
lines = [
    "# Router overhead (loopback, tiny model)", "",
    f"Measured {result['date']} on {result['cpus']} CPUs by `bench/router/router_bench.sh`: one sqa-worker "
    f"(tiny SQA model, CPU, 1 thread) and one sqa-router on 127.0.0.1; sqa-load with concurrency "
    f"{cfg['concurrency']}, {result['requests_per_round']} requests per round, prompt {cfg['prompt_tokens']} "
    f"tokens, {cfg['max_tokens']} generated tokens; {rounds} alternating rounds, median round reported. "
    "\"direct\" calls the worker's sqa.v1.Worker service, \"router\" the router's sqa.v1.Inference.", "",
    "| metric | direct | via router | added by router |", "|---|---:|---:|---:|",
]
for m, d, r, a in rows:
    lines.append(f"| {m} | {d:.3f} | {r:.3f} | {a:+.3f} |")
lines.append(f"| requests/s | {rps_d:.1f} | {rps_r:.1f} | {rps_r - rps_d:+.1f} |")
lines += ["", f"Failed requests: direct {result['failed']['direct']}, router {result['failed']['router']}. "
          f"1-minute load average at the end: {result['load_average_1m']:.1f} on {result['cpus']} CPUs "
          "(on a shared machine the p99 rows mostly measure scheduling noise).",
          "Target: p99 added latency <= 1 ms on loopback."]
open("bench/results/router.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
