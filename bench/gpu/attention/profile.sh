#!/bin/bash
# ncu profiles behind bench/gpu/attention/NOTES.md (v12/v13/v13b prefill, decode v3/v4).
# usage (device, after `. .gpu-bundle/env.sh`):
#   profile.sh prefill BENCH [KERNEL] [LAYOUT]   one paged launch of KERNEL (default wgmma) at 32k:
#                                                tensor/MUFU pipes, issue slots, stall reasons
#   profile.sh decode BENCH LAYOUT CTX BATCH [v4|v3]   the split kernel and the combine of one call
# BENCH is an sqa-attn-bench binary. KERNEL: wgmma (v14, the default), cpasync (v13b), pingpong (v12); for the
# reverted v13 build commit 0956e32 and pass overlap.
set -uo pipefail
NCU=${NCU:-/usr/local/cuda/bin/ncu}
mode=$1; bench=$2; shift 2
case $mode in
  prefill)
    kernel=${1:-wgmma}; layout=${2:-xSQA}
    # The bench runs contiguous first (3 warm-up + 10 timed launches at 32k), then paged: skip 13.
    "$NCU" --clock-control none -k regex:Prefill --launch-skip 13 --launch-count 1 \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section SchedulerStats --section WarpStateStats \
      --metrics smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,smsp__inst_executed.sum \
      "$bench" --layouts "$layout" --prefill 32768 --kernels "$kernel" --decode-ctx "" ;;
  decode)
    layout=$1; ctx=$2; batch=$3; kernel=${4:-v4}
    "$NCU" --clock-control none -k regex:Decode --launch-count 2 \
      --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \
      "$bench" --prefill "" --layouts "$layout" --decode-ctx "$ctx" --decode-batch "$batch" --decode-kernels "$kernel" ;;
  *) echo "usage: profile.sh prefill|decode BENCH ..." >&2; exit 2 ;;
esac
