#!/bin/bash
# Session 9, call 3: why end-to-end decode at batch 1 got slower with v5 (call 2: MHA 1.01 -> 1.19
# ms a step). Decode only, MHA and GQA, batch 1 and 32, with --decode-kernel v5, v5w and v4 in one
# run; then the step profile (ncu, serialized kernels) of MHA batch 1 with v5 and with v4.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
for l in MHA GQA; do
  m=/tmp/sqa_e2e_$l
  $B/sqa-mkmodel --out $m --preset 1b --layout $l --dtype bf16 --seed 7 > /dev/null
  for rep in 1 2; do
  for k in v5 v5w v4; do
    timeout 60 $B/sqa-e2e-bench --model $m --device cuda --prefill none --decode-batch 1,32 --cuda-graphs on --decode-kernel $k --json $O/r/e2e_${l}_${k}_$rep.json > /dev/null 2> $O/r/e2e_${l}_${k}_$rep.log
    echo "$l $k rep$rep rc=$? $(python3 -c "import json;d=json.load(open('$O/r/e2e_${l}_${k}_$rep.json'));print(' '.join('b%d %.3f ms'%(r['batch'],r['ms_per_step']) for r in d['decode']))")"
  done; done
done
el "e2e done"
for k in v5 v4; do
  DECODE_KERNEL=$k timeout 100 bash bench/gpu/e2e/profile_decode.sh $B $O/r/prof MHA 1 > $O/r/prof_$k.log 2>&1
  el "profile $k rc=$?"; head -12 $O/r/prof/step_kernels_MHA_b1_$k.md
done
rm -f $O/r/prof/*.csv
tar -cf $O/r.tar -C $O r && rm -rf $O/r
