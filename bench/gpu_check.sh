#!/usr/bin/env bash
# Every check and figure that needs a CUDA GPU, in groups run in the order given (default: cuda bench demos suite):
#   cuda    tests/test_cuda.py: the CUDA paths against their CPU forms
#   bench   DVBPR and GAN throughput at AmazonFashion size (bf16 and fp32, resident and streamed images), and
#           one vs two ranks sharing the GPU under torchrun (a functional check: one GPU cannot show scaling)
#   demos   `python dvbpr/main.py` and `python gan/main.py --train` on the embedded catalogue, on the GPU
#   design  the diffusion model with its moving average, trained, resumed and designed with (Table IV with a guided
#           row) on the embedded catalogue, on the GPU
#   presets the design half's GPU presets (gan/config.py gpu-64, gpu-128) trained on the embedded catalogue, their
#           samples' KID at 32 px beside the CPU demo's (runs/gan, if there), Table IV (with the best-samples control,
#           --sampled) and fig. 5 through each, with runs/dvbpr and runs/judge if there (else trained here)
#   presets-tuned  the same presets, then PM tuned through each on 60 validation queries (pm/main.py --tune) and
#           Table IV and fig. 5 at the setting it chose within the random samples' KID (--steps-from-tune);
#           (both groups: SIZES="128" for one preset)
#   suite   the rest of the test suite on the GPU machine (its tests then take "auto" = cuda)
#   tests   cuda, then suite
#
#     OUT=/some/folder bash bench/gpu_check.sh cuda bench   # logs and grids go to $OUT (default runs/gpu_check)
#
# Each step has its own time limit, cut to what is left of BUDGET seconds for the whole script (default 540, so the
# default groups end within ten minutes); a step that would get less than 10 s is skipped and says so. A failed step
# is reported and the next one runs. The summary at the end lists every step's exit status and the figures.
# tests/test_gpu_check.py runs the groups with a stand-in python3 and checks every stage command they make.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=5
STATUS=()

BUDGET=${BUDGET:-540}

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2 started=$SECONDS rc
  shift 2
  if (( BUDGET - SECONDS < limit )); then limit=$(( BUDGET - SECONDS )); fi
  if (( limit < 10 )); then
    STATUS+=("$name: skipped, ${BUDGET} s budget spent")
    echo "--- $name: skipped, ${BUDGET} s budget spent" | tee -a "$LOG"
    return
  fi
  echo "=== $name: $*" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  rc=$?
  STATUS+=("$name: exit $rc in $((SECONDS - started)) s")
  echo "--- $name: exit $rc in $((SECONDS - started)) s" | tee -a "$LOG"
}

AMAZON=(--users 64583 --items 234892 --image-size 224 --steps 100 --warmup 10 --devices cuda)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee -a "$LOG"

cuda() { step cuda-tests 100 python3 -m pytest -q -rs -n 0 tests/test_cuda.py; }   # one file: no workers to start
# the rest of the suite took 288 s on an H200 machine's 16 cores
suite() { step all-tests 330 python3 -m pytest -q -p no:cacheprovider tests --ignore=tests/test_cuda.py; }
tests() { cuda; suite; }

bench() {
  step dvbpr-bf16 45 python3 bench/dvbpr_throughput.py "${AMAZON[@]}"
  step dvbpr-fp32 45 python3 bench/dvbpr_throughput.py "${AMAZON[@]}" --no-bf16
  step dvbpr-stream 45 python3 bench/dvbpr_throughput.py "${AMAZON[@]}" --stream --images 8192
  step gan-bf16 30 python3 bench/gan_throughput.py --preset paper --devices cuda --iterations 50
  step gan-fp32 30 python3 bench/gan_throughput.py --preset paper --devices cuda --iterations 50 --no-bf16
  step dvbpr-1-rank 30 python3 bench/dvbpr_throughput.py --devices cuda --image-size 224 --steps 50
  step dvbpr-2-ranks 60 python3 -m torch.distributed.run --standalone --nproc_per_node=2 bench/dvbpr_throughput.py \
    --devices cuda --image-size 224 --steps 50
}

demos() {  # at the paper's sizes, in bf16 and in fp32 (does bf16 spoil training?); the catalogue's images are 128 px
  local dvbpr=(python3 dvbpr/main.py --device cuda --image-size 224 --epochs 10)
  local gan=(python3 gan/main.py --train --device cuda --image-size 128 --g-width 64 --d-width 64 --epochs 25)
  step dvbpr-demo 60 "${dvbpr[@]}" --out "$OUT/dvbpr"
  step dvbpr-demo-fp32 90 "${dvbpr[@]}" --no-bf16 --out "$OUT/dvbpr-fp32"
  step gan-demo 60 "${gan[@]}" --out "$OUT/gan"
  step gan-demo-fp32 90 "${gan[@]}" --no-bf16 --out "$OUT/gan-fp32"
  step gan-grids 20 python3 gan/main.py --device cuda --out "$OUT/gan"
  # what comes back stays small: the log, the DVBPR results and two grids
  cp "$OUT/dvbpr/results.json" "$OUT/dvbpr_results.json" 2>/dev/null
  cp "$OUT/dvbpr-fp32/results.json" "$OUT/dvbpr_fp32_results.json" 2>/dev/null
  cp "$OUT/gan/samples/test_arange_0.png" "$OUT/gan_category_0.png" 2>/dev/null
  cp "$OUT/gan/samples/test_arange_5.png" "$OUT/gan_category_5.png" 2>/dev/null
  rm -rf "$OUT/dvbpr" "$OUT/dvbpr-fp32" "$OUT/gan" "$OUT/gan-fp32"
}

design() {  # bf16 UNet, the average's update, CUDA generator state in the checkpoint, guided sampling
  local diffusion=(python3 gan/main.py --train --device cuda --generator diffusion --lr 1e-3 --beta1 0.9 --beta2 0.999
                   --ema 0.999 --out "$OUT/diffusion")
  step diffusion-demo 60 "${diffusion[@]}" --epochs 8
  step diffusion-resume 30 "${diffusion[@]}" --epochs 9 --resume
  step dvbpr-for-design 60 python3 dvbpr/main.py --device cuda --out "$OUT/dvbpr-design"
  # 10 trials: the 20 of the demo took ~4 s each on an H200, past this step's limit
  step guided-table 90 python3 pm/main.py --table --device cuda --dvbpr-run "$OUT/dvbpr-design" --gan-run \
    "$OUT/diffusion" --latent sphere --init prior --starts 4 --steps 20 --guidance 0.3 --trials 10 \
    --out "$OUT/pm-diffusion"
  cp "$OUT/pm-diffusion/table_iv.md" "$OUT/design_table_iv.md" 2>/dev/null
  rm -rf "$OUT/diffusion" "$OUT/dvbpr-design" "$OUT/pm-diffusion"
}

preset_runs() {  # DVBPR and judge runs (runs/dvbpr and runs/judge where there) and the GPU presets' GANs
  DVBPR=runs/dvbpr JUDGE=runs/judge
  [[ -f $DVBPR/checkpoint.pt ]] || { DVBPR=$OUT/dvbpr-design; step dvbpr-for-presets 60 python3 dvbpr/main.py \
    --device cuda --out "$DVBPR"; }
  [[ -f $JUDGE/checkpoint.pt ]] || { JUDGE=$OUT/judge-design; step judge-for-presets 60 python3 dvbpr/main.py \
    --device cuda --seed 1 --out "$JUDGE"; }
  for size in ${SIZES:-64 128}; do
    step "gan-gpu-$size" 200 python3 gan/main.py --train --preset "gpu-$size" --device cuda --out "$OUT/gan-$size"
  done
}

presets_tuned() {
  local size
  preset_runs
  mkdir -p "$OUT/presets-tuned"
  for size in ${SIZES:-64 128}; do
    step "tune-gpu-$size" 150 python3 pm/main.py --tune --device cuda --dvbpr-run "$DVBPR" --judge-run "$JUDGE" \
      --gan-run "$OUT/gan-$size" --trials 60 --tune-starts 16 --tune-steps 0 2 5 10 25 50 100 --tune-lrs 0.1 \
      --out "$OUT/pm-tune-$size"
    step "tuned-table-gpu-$size" 90 python3 pm/main.py --table --device cuda --dvbpr-run "$DVBPR" --judge-run \
      "$JUDGE" --gan-run "$OUT/gan-$size" --steps-from-tune "$OUT/pm-tune-$size" --sampled \
      --out "$OUT/pm-table-$size"
    step "tuned-figure-gpu-$size" 60 python3 pm/main.py --device cuda --dvbpr-run "$DVBPR" --gan-run \
      "$OUT/gan-$size" --steps-from-tune "$OUT/pm-tune-$size" --out "$OUT/pm-figure-$size"
    cp "$OUT/pm-tune-$size/tune.md" "$OUT/presets-tuned/tune_$size.md" 2>/dev/null
    cp "$OUT/pm-table-$size/table_iv.md" "$OUT/presets-tuned/table_iv_$size.md" 2>/dev/null
    cp "$OUT/pm-figure-$size/personal_design.png" "$OUT/presets-tuned/personal_design_$size.png" 2>/dev/null
    cp "$OUT/gan-$size/samples/beside_real.png" "$OUT/presets-tuned/gan_${size}_beside_real.png" 2>/dev/null
  done
  rm -rf "$OUT"/gan-* "$OUT"/pm-tune-* "$OUT"/pm-table-* "$OUT"/pm-figure-* "$OUT"/dvbpr-design "$OUT"/judge-design
}

presets() {
  local demo=() runs=() size
  preset_runs
  [[ -f runs/gan/checkpoint.pt ]] && demo=(runs/gan)
  for size in ${SIZES:-64 128}; do runs+=("$OUT/gan-$size"); done
  step score-presets 90 python3 bench/gan_quality.py --score "${runs[@]}" "${demo[@]}" \
    --score-size 32 --device cuda --out "$OUT/quality"
  for size in ${SIZES:-64 128}; do
    step "table-gpu-$size" 150 python3 pm/main.py --table --device cuda --dvbpr-run "$DVBPR" --judge-run "$JUDGE" \
      --gan-run "$OUT/gan-$size" --sampled --out "$OUT/pm-table-$size"
    step "figure-gpu-$size" 60 python3 pm/main.py --device cuda --dvbpr-run "$DVBPR" --gan-run "$OUT/gan-$size" \
      --out "$OUT/pm-figure-$size"
    step "grids-gpu-$size" 30 python3 gan/main.py --device cuda --out "$OUT/gan-$size"
  done
  # what comes back stays small: the tables, scores, figures, grids and training logs
  mkdir -p "$OUT/presets"
  cp "$OUT/quality/scores.json" "$OUT/presets/scores.json" 2>/dev/null
  for size in ${SIZES:-64 128}; do
    cp "$OUT/pm-table-$size/table_iv.md" "$OUT/presets/table_iv_$size.md" 2>/dev/null
    cp "$OUT/pm-table-$size/table_iv.json" "$OUT/presets/table_iv_$size.json" 2>/dev/null
    cp "$OUT/pm-figure-$size/personal_design.png" "$OUT/presets/personal_design_$size.png" 2>/dev/null
    cp "$OUT/gan-$size/metrics.jsonl" "$OUT/presets/gan_metrics_$size.jsonl" 2>/dev/null
    cp "$OUT/gan-$size/samples/beside_real.png" "$OUT/presets/gan_${size}_beside_real.png" 2>/dev/null
    for category in 0 1 2 3 4 5; do
      cp "$OUT/gan-$size/samples/test_arange_$category.png" "$OUT/presets/gan_${size}_category_$category.png" 2>/dev/null
    done
  done
  rm -rf "$OUT"/gan-* "$OUT/quality" "$OUT"/pm-table-* "$OUT"/pm-figure-* "$OUT"/dvbpr-design "$OUT"/judge-design
}

for group in "${@:-cuda bench demos suite}"; do
  for name in $group; do
    case $name in
      cuda|bench|demos|design|presets|suite|tests) $name ;;
      presets-tuned) presets_tuned ;;
      *) echo "unknown group $name (cuda, bench, demos, design, presets, presets-tuned, suite, tests)" >&2; exit 2 ;;
    esac
  done
done

echo "=== summary" | tee -a "$LOG"
printf '%s\n' "${STATUS[@]}" | tee -a "$LOG"
grep -E "passed|failed|triplets/s|images/s|condition consistency|results \(best|KID" "$LOG" | tee -a "$OUT/summary.txt"
