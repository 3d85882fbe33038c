set -x
. .gpu-bundle/env.sh
B=.gpu-bundle; R=$OUT/r; mkdir -p $R
timeout 100 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1
grep -E "FAILED|PASSED|exit|PASS" $R/gpu_tests.log | head
for l in MHA xSQA; do
  m=/tmp/m_$l
  $B/sqa-mkmodel --out $m --preset 1b --layout $l --dtype bf16 --seed 7 > /dev/null
  for rep in 1 2 3; do
    for v in head new; do
      bin=$B/sqa-e2e-bench; [ $v = head ] && bin=$B/sqa-e2e-bench-head
      timeout 40 $bin --model $m --device cuda --prefill none --decode-batch 1,8 --cuda-graphs on --json $R/e2e_${l}_${v}_$rep.json > $R/e2e_${l}_${v}_$rep.log 2>&1
      echo "$l $v $rep $(grep -h ms_per_step $R/e2e_${l}_${v}_$rep.json | tr -d ' \n')"
    done
  done
  rm -rf $m
done
tar -cf $OUT/r.tar -C $OUT r
