#!/bin/bash
# Session 7, call 3: per-instruction stall samples of the v4 and v5 split kernels (call 1/2 profiles).
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
NCU=/usr/local/cuda/bin/ncu; command -v ncu >/dev/null && NCU=$(command -v ncu)
$NCU --version | tail -1
for f in ncu_Decode_131072 ncu_v5_131072; do
  $NCU --import $B/$f.ncu-rep --page source --csv --print-source sass -k regex:DecodeKernelV4 > $O/r/${f}_sass.csv 2> $O/r/${f}_sass.err
  echo "$f rc=$? $(wc -l < $O/r/${f}_sass.csv) lines"; head -c 600 $O/r/${f}_sass.csv; echo; head -3 $O/r/${f}_sass.err
done
gzip $O/r/*.csv
tar -cf $O/r.tar -C $O r && rm -rf $O/r
