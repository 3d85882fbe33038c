#!/bin/bash
# The end-to-end call after call.sh (same bundle, same machine session):
. .gpu-bundle/env.sh && mkdir -p $OUT/e2e && MODEL_DIR=/tmp timeout 140 bash bench/gpu/e2e/run_e2e.sh .gpu-bundle $OUT/e2e MHA GQA SQA sSQA xSQA > $OUT/e2e.log 2>&1
