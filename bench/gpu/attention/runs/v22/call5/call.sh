set -x
. .gpu-bundle/env.sh
B=.gpu-bundle; R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $R/smi.txt
timeout 150 $B/attention_cuda_test --gtest_color=no > $R/attn_test.log 2>&1; echo "== exit $?" >> $R/attn_test.log
grep -E "FAILED|PASSED|exit|Failure" $R/attn_test.log | head -20
timeout 120 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1
grep -E "FAILED|PASSED|exit|PASS" $R/gpu_tests.log | head
timeout 60 $B/sqa-attn-bench --prefill "" --decode-ctx 1024,2048,4096 --decode-batch 1,4 --layouts MHA,GQA,MQA,xSQA --decode-kernels auto,v6 --json $R/short.json > $R/short.log 2>&1
grep -v "^ " $R/short.log | head -60
for l in MHA GQA xSQA; do
  m=/tmp/m_$l
  $B/sqa-mkmodel --out $m --preset 1b --layout $l --dtype bf16 --seed 7 > /dev/null
  for rep in 1 2; do
    for k in v6 auto; do
      timeout 60 $B/sqa-e2e-bench --model $m --device cuda --prefill none --decode-batch 1,8 --cuda-graphs on --decode-kernel $k --json $R/e2e_${l}_${k}_$rep.json > $R/e2e_${l}_${k}_$rep.log 2>&1
      echo "$l $k $rep $(grep -h ms_per_step $R/e2e_${l}_${k}_$rep.json | tr -d ' \n')"
    done
  done
  rm -rf $m
done
HF_FROM=bench/gpu/e2e/runs/s10/final CUDA_GRAPHS=both timeout 300 bash bench/gpu/e2e/run_e2e.sh $B $R/e2e MHA GQA SQA sSQA xSQA > $R/e2e_full.log 2>&1; echo full_rc=$?
tar -cf $OUT/r.tar -C $OUT r
