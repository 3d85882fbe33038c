#!/bin/bash
# Session 7, call 2: decode tests (v5 new), stall breakdown of call 1's v4 profiles, v5 vs v4 decode rows, ncu of v5.
set -o pipefail
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
NCU=/usr/local/cuda/bin/ncu; command -v ncu >/dev/null && NCU=$(command -v ncu)
timeout 120 $B/attention_cuda_test --gtest_filter='*Decode*' > $O/r/test_decode.log 2>&1
el "decode tests rc=$?"; grep -E "^\[  (PASSED|FAILED)|OK \]|FAILED \]" $O/r/test_decode.log | head; grep -m5 -B2 -A6 "Failure" $O/r/test_decode.log | head -40
stalls() { $NCU --import $1 --page raw 2>/dev/null | grep -E "^  [a-zA-Z].*\(|issue_stalled|smsp__cycles_active.avg |gpu__time_duration.sum" | grep -vE " 0$| 0\.0[0-9]*$" ; }
for f in $B/ncu_Decode_131072.ncu-rep; do echo "== v4 $f"; stalls $f | awk '$NF+0>=1 || /\(/' | head -40; done > $O/r/stalls_v4.txt
cat $O/r/stalls_v4.txt | head -60
timeout 200 $B/sqa-attn-bench --prefill "" --layouts MQA,xSMQA,GQA,MHA --decode-kernels v5,v4 --read-floor-max-gb 0 --json $O/r/dec.json > $O/r/dec.log 2>&1
el "dec rc=$?"; grep -E " v[45] " $O/r/dec.log | awk '{k[$1" "$2" "$3][$4]=$6} END {for (x in k) printf "%s v4 %s v5 %s ratio %.3f\n", x, k[x]["v4"], k[x]["v5"], k[x]["v4"]/k[x]["v5"]}' | sort -k1,1 -k2n -k3n
timeout 120 $NCU --clock-control none -k regex:Decode --launch-count 2 --set full -o $O/r/ncu_v5_131072 \
  $B/sqa-attn-bench --prefill "" --layouts MQA --decode-ctx 131072 --decode-batch 1 --decode-kernels v5 --sustain-ms 0 > $O/r/ncu_v5.log 2>&1
el "ncu v5 rc=$?"
$NCU --import $O/r/ncu_v5_131072.ncu-rep --page details > $O/r/ncu_v5_131072_details.txt 2>&1
grep -E "^  [a-z ]*void|Duration|SM Active Cycles|DRAM Throughput  |Issue Slots Busy|Eligible Warps|Warp Cycles Per Issued|Registers Per" $O/r/ncu_v5_131072_details.txt
stalls $O/r/ncu_v5_131072.ncu-rep | awk '$NF+0>=1 || /\(/' | head -40 > $O/r/stalls_v5.txt; cat $O/r/stalls_v5.txt
tar -cf $O/r.tar -C $O r && rm -rf $O/r
