#!/usr/bin/env bash
# The one script to run on a machine with a GPU: build, run the whole test suite (CUDA
# cases included), run the kernel and whole-step benchmarks, a short full-size training
# run, and write everything to $OUT (default benchmarks/results/latest):
#   summary.md   GPU, commit, pass/fail counts, benchmark table, training images/s
#   build.log tests.log bench.txt bench.json train.log
# Each stage has its own time limit so a hang in one still leaves the others' results.
# Usage: tools/gpu_check.sh [stages...]   (stages: build tests variants bench train ncu host memcheck;
# default build tests bench train: the issue's check, meant to end inside 8 minutes; the rest on request)
# variants: the conv/linear tests under each GEMM variant in $VARIANTS (CONVNET_CONV_VARIANT;
# default "4 5") and their benchmarks side by side (variants.log, bench-variants.txt).
# bench: benchmarks/run.py --profile, so bench.txt ends with the kernels (and GPU times) of one
# call of ours and of PyTorch's per case (which algorithm cuDNN picked, where our time goes);
# BENCH_ONLY=pool,lrn (say) limits it to those families.
# A check of CUDA code written without a GPU, about 3 minutes on an H200 (2026-11-27): the tests
# limited to the GPU cases (the CPU cases and the emulators already ran where the code was
# written), both conv variants, the local ops and the whole step, Nsight Compute, memcheck.
# Pass COMMIT: the device machine's copy of .git can be older than the tree it was sent.
#   COMMIT=$(git rev-parse --short HEAD) TEST_FILTER="cuda or gpu or pinned or allocator" \
#     BENCH_ONLY=pool,lrn,softmax,step tools/gpu_check.sh build tests variants bench ncu host memcheck
# (it writes 9 files; the device tool returns 8: delete bench.json, say, before the call ends;
# without the variants stage, 7). The ncu stage profiles every max-pool variant and LRN with
# the memory section too: allow it NCU_TIMEOUT=200 (this whole command took 149 s on an H200, 0627c99).
# (TEST_FILTER: pytest -k; TEST_ARGS: more pytest arguments, split on spaces.)
# ncu: Nsight Compute's throughput, memory, occupancy and stall sections for the kernels of
# tools/gpu_probe.py (conv2's FFT backward-filter, max-pool under every variant, LRN at conv1's
# size and on 56x56 planes): ncu.txt, whose
# lines per kernel (duration, DRAM throughput, occupancy, registers) are copied to summary.md.
# host: tools/gpu_probe.py host, per-call times of the small ops and their parts, into summary.md.
# memcheck: compute-sanitizer over tools/gpu_probe.py's small calls (memcheck.txt), with
# CONVNET_NO_MEMORY_CACHING=1.
# train: the paper's net at 224x224 on the built-in data, 12 epochs at lr 0.001 (images/s, and it
# must learn: 34.6% validation top-1 on the CPU; the paper's 0.01 diverges on this data, see
# docs/TRAINING.md), then the default small net (train-small.log: it must learn, as on the CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/latest}
mkdir -p "$OUT"
STAGES=${*:-build tests bench train}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # tools/gpu_probe.py imports the package built here
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
summary="$OUT/summary.md"
commit=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export COMMIT=$commit
dirty=$(git status --porcelain 2>/dev/null | grep -v '^??' | wc -l)
{
  echo "# GPU check"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- commit: $commit$([ "$dirty" != 0 ] && echo " (+ uncommitted changes)")"
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo none)"
  echo "- python: $($PY --version 2>&1); torch: $($PY -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)"
  echo "- nvcc: $(nvcc --version 2>/dev/null | tail -1)"
} > "$summary"

stage() { [[ " $STAGES " == *" $1 "* ]]; }
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 ))s; }

if stage build; then
  echo "== build ($(elapsed))"
  if CONVNET_CUDA=ON JOBS=$(nproc) CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${CONVNET_CUDA_ARCH:-90-real} -DCONVNET_PTXAS_VERBOSE=ON" \
     timeout 300 tools/dev_build.sh > "$OUT/build.log" 2>&1; then
    echo "- build: ok ($(elapsed)); spills reported: $(grep -c 'bytes spill stores' "$OUT/build.log" | tr -d ' ') lines, non-zero: $(grep 'bytes spill' "$OUT/build.log" | grep -vc ' 0 bytes spill stores, 0 bytes spill loads')" >> "$summary"
  else
    echo "- build: FAILED (see build.log)" >> "$summary"; tail -40 "$OUT/build.log"; exit 1
  fi
  $PY -c "import convnet; assert convnet.cuda_available(), 'no GPU visible to convnet'; print('GPUs:', convnet.device_count(), convnet._C.cuda_device_name(0))" 2>&1 | tee -a "$OUT/build.log"
fi

if stage tests; then
  echo "== tests ($(elapsed))"
  timeout ${TEST_TIMEOUT:-300} $PY -m pytest -v -rfEs --maxfail=30 -p no:cacheprovider tests \
    ${TEST_FILTER:+-k "$TEST_FILTER"} ${TEST_ARGS:-} > "$OUT/tests.log" 2>&1
  rc=$?
  line=$(grep -E '^[=]* *[0-9]+ (passed|failed)|^[0-9]+ (passed|failed)|error' "$OUT/tests.log" | tail -1)
  echo "- tests (rc $rc): $line" >> "$summary"
  echo "- CUDA cases passed: $(grep -E 'cuda.*PASSED' "$OUT/tests.log" | wc -l | tr -d ' '), failed: $(grep -E 'cuda.*(FAILED|ERROR)' "$OUT/tests.log" | wc -l | tr -d ' ')" >> "$summary"
  grep -E '^(FAILED|ERROR)' "$OUT/tests.log" | head -40 | sed 's/^/  - /' >> "$summary"
fi

if stage variants; then
  echo "== variants ($(elapsed))"
  VARIANTS=${VARIANTS:-4 5}
  : > "$OUT/variants.log"
  for v in $VARIANTS; do
    echo "== CONVNET_CONV_VARIANT=$v" >> "$OUT/variants.log"
    CONVNET_CONV_VARIANT=$v timeout 120 $PY -m pytest -q -p no:cacheprovider -k cuda \
      tests/test_conv.py tests/test_linear.py tests/test_conv_variants.py tests/test_graph.py > "$OUT/variants-$v.tmp" 2>&1
    echo "- tests with CONVNET_CONV_VARIANT=$v (rc $?): $(tail -1 "$OUT/variants-$v.tmp")" >> "$summary"
    cat "$OUT/variants-$v.tmp" >> "$OUT/variants.log"; rm -f "$OUT/variants-$v.tmp"
  done
  CONVNET_BENCH_VARIANTS=$(echo $VARIANTS | tr ' ' ,) timeout 150 $PY benchmarks/run.py --device cuda:0 --only conv,linear > "$OUT/bench-variants.txt" 2>&1
  echo "- variant benchmark rc $? (bench-variants.txt)" >> "$summary"
fi

if stage bench; then
  echo "== bench ($(elapsed))"
  timeout ${BENCH_TIMEOUT:-300} $PY benchmarks/run.py --device cuda:0 --profile ${BENCH_ONLY:+--only $BENCH_ONLY} \
    --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
  echo "- bench rc $?" >> "$summary"
  { echo; echo '```'; sed -n '/^# cuda/,/^# kernels/p' "$OUT/bench.txt" | grep -v '^# kernels'; echo '```'; } >> "$summary"
fi

if stage train; then
  echo "== train ($(elapsed))"
  rm -rf /tmp/convnet-gpu-run /tmp/convnet-gpu-small  # a new run refuses a folder holding an old one
  CONVNET_DATA=/tmp/convnet-data timeout ${TRAIN_TIMEOUT:-150} $PY -m convnet.train ${TRAIN_ARGS:---model alexnet --image-size 256 --num-train 5120 --num-val 512 --epochs 12 --lr 0.001 --devices cuda:0 --run-dir /tmp/convnet-gpu-run --progress 0 --plots 0} > "$OUT/train.log" 2>&1
  echo "- train rc $?:" >> "$summary"; grep -E '^epoch|^data|^recipe|^done' "$OUT/train.log" | sed 's/^/  /' >> "$summary"
  CONVNET_DATA=/tmp/convnet-data timeout ${TRAIN2_TIMEOUT:-150} $PY -m convnet.train ${TRAIN2_ARGS:---run-dir /tmp/convnet-gpu-small --progress 0 --plots 0} > "$OUT/train-small.log" 2>&1
  echo "- train (default small net, default devices: two logical GPUs on one) rc $?:" >> "$summary"; grep -E '^epoch|^done' "$OUT/train-small.log" | sed 's/^/  /' >> "$summary"
fi

if stage ncu; then
  echo "== ncu ($(elapsed))"
  timeout ${NCU_TIMEOUT:-150} ncu --clock-control none -k regex:"${NCU_KERNELS:-spectrum|filter_kernel|gemm|gather|max_pool|lrn}" \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
    --section WarpStateStats --section SchedulerStats \
    $PY tools/gpu_probe.py > "$OUT/ncu.txt" 2>&1
  echo "- ncu rc $? (ncu.txt):" >> "$summary"
  grep -E '^  [a-zA-Z_].*\(|^    (Duration|DRAM Throughput|Achieved Occupancy|Registers Per Thread|Issued Warp Per Scheduler) ' \
    "$OUT/ncu.txt" | sed -e 's/^  \(.\{100\}\).*/  \1/' -e 's/^/  /' >> "$summary"
fi

if stage host; then
  echo "== host ($(elapsed))"
  { echo; echo '```'; timeout 60 $PY tools/gpu_probe.py host 2>&1; echo '```'; } >> "$summary"
fi

if stage memcheck; then
  echo "== memcheck ($(elapsed))"
  # each tensor its own exact-size cudaMalloc, so that reads past a tensor are past an allocation
  CONVNET_NO_MEMORY_CACHING=1 timeout ${MEMCHECK_TIMEOUT:-120} compute-sanitizer --tool memcheck --leak-check no $PY tools/gpu_probe.py small > "$OUT/memcheck.txt" 2>&1
  echo "- memcheck rc $?: $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.txt" | tail -1)" >> "$summary"
fi
echo "- total $(elapsed)" >> "$summary"
cat "$summary"
