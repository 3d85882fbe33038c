#!/bin/bash
# Runs the CUDA backend's GPU tests on a GPU machine and prints one log (for bench/results/gpu_tests.log):
# the backend op tests, the engine-vs-CPU tests and the CUDA-graph / GPU-sampling tests (gtest), then sqa-run --device cuda against the
# NumPy reference. usage: run_gpu_tests.sh BIN_DIR   (BIN_DIR holds the test binaries, sqa-mkmodel, sqa-run)
set -uo pipefail
bin=$1
here=$(cd "$(dirname "$0")" && pwd)
rc=0
echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
for t in cuda_backend_test cuda_engine_test cuda_graph_test; do
  echo "== $t"
  s=$(date +%s)
  "$bin/$t" --gtest_color=no 2>&1 || rc=1
  echo "== $t took $(( $(date +%s) - s )) s"
done
echo "== reference_cuda.py (sqa-run --device cuda vs tests/reference/sqa_reference.py)"
SQA_BIN_DIR=$bin OMP_NUM_THREADS=8 python3 "$here/reference_cuda.py" 2>&1 || rc=1
echo "== exit $rc"
exit $rc
