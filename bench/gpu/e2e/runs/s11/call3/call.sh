set -x
. .gpu-bundle/env.sh
B=.gpu-bundle; R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $R/smi.txt
timeout 120 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; tail -2 $R/gpu_tests.log
grep -E "FAILED|PASSED|exit" $R/gpu_tests.log | head
for rep in 1 2; do
  timeout 60 $B/sqa-gemm-bench-old --rows 1,8 --json $R/gemm_old_$rep.json > $R/gemm_old_$rep.log 2>&1
  timeout 60 $B/sqa-gemm-bench --rows 1,8 --json $R/gemm_auto_$rep.json > $R/gemm_auto_$rep.log 2>&1
done
for w in 8 16; do
  timeout 60 $B/sqa-gemm-bench --rows 1,8 --skinny-warps $w --shapes 4096:4096,8192:2048,5632:5632,11008:4096,4096:11008,2560:2048 --json $R/gemm_deep_$w.json > $R/gemm_deep_$w.log 2>&1
done
for l in MHA xSQA; do
  m=/tmp/m_$l
  $B/sqa-mkmodel --out $m --preset 1b --layout $l --dtype bf16 --seed 7 > /dev/null
  for rep in 1 2; do
    for v in old new; do
      bin=$B/sqa-e2e-bench; [ $v = old ] && bin=$B/sqa-e2e-bench-old
      timeout 90 $bin --model $m --device cuda --prefill none --decode-batch 1,8 --cuda-graphs on --json $R/e2e_${l}_${v}_$rep.json > $R/e2e_${l}_${v}_$rep.log 2>&1
    done
  done
  rm -rf $m
done
HF_FROM=bench/gpu/e2e/runs/s10/final CUDA_GRAPHS=both timeout 300 bash bench/gpu/e2e/run_e2e.sh $B $R/e2e MHA GQA SQA sSQA xSQA > $R/e2e_full.log 2>&1; echo full_rc=$?
tar -cf $OUT/r.tar -C $OUT r
