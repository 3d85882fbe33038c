set -x
. .gpu-bundle/env.sh
B=.gpu-bundle; R=$OUT/r; mkdir -p $R
for l in MHA xSQA; do
  m=/tmp/m_$l
  $B/sqa-mkmodel --out $m --preset 1b --layout $l --dtype bf16 --seed 7 > /dev/null
  for ko in none AddRmsNorm RopeQK WriteKv AttentionDecode LinearMany LinearSwiGlu LinearO LinearDown LmHead AddRmsNorm,RopeQK,WriteKv none; do
    [ $l = xSQA ] && [ $ko != none ] && [ $ko != AttentionDecode ] && [ $ko != AddRmsNorm ] && continue
    k=$ko; [ $ko = none ] && k=""
    SQA_KNOCKOUT=$k timeout 60 $B/sqa-e2e-bench-ko --model $m --device cuda --prefill none --decode-batch 1 --cuda-graphs on --json $R/ko_${l}_${ko}.json > $R/ko_${l}_${ko}.log 2>&1
    echo "$l $ko $(grep -h ms_per_step $R/ko_${l}_${ko}.json)"
  done
  rm -rf $m
done
tar -cf $OUT/r.tar -C $OUT r
