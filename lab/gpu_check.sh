#!/usr/bin/env bash
# The GPU checks in one go (minutes on a recent GPU): logs and JSON go to the folder given (default runs/gpu_check).
#   1. every stage's training step at its default config, fp32 and AMP: peak CUDA memory and speed
#      (lab/bench_stages.py; the worst-case batch each config admits);
#   2. Stage A end to end on CUDA under AMP: a stopped run, then --resume with torch.compile, on the
#      committed sonnets (metrics.jsonl then carries cuda_peak_gib);
#   3. every stage again under torch.compile, at its configured precision.
# Each part has its own time limit, so one that hangs cannot hide the others' numbers.
#   bash lab/gpu_check.sh [OUT_DIR]
set -u
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_check}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/nvidia_smi.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

echo "== 1. bench_stages: fp32 and AMP, eager"
timeout "${EAGER_S:-180}" $py lab/bench_stages.py --precision both --json "$out/bench_eager.json" 2>&1 \
  | tee "$out/bench_eager.log"

echo "== 2. Stage A on CUDA: 20 steps under AMP, stop, resume with torch.compile to 40"
e2e=$(mktemp -d)
args=(--config configs/thinker_demo.json data.train_file=assets/text/sonnets.txt data.val_file= train.precision=auto
      train.max_steps=40 train.val_freq=20 train.checkpoint_freq=20 "train.save_dir=$e2e")
{ timeout "${E2E_S:-150}" $py train_text.py "${args[@]}" --stop-at 20 &&
  timeout "${E2E_S:-150}" $py train_text.py "${args[@]}" train.compile=true --resume; } 2>&1 \
  | tr "\r" "\n" | awk "!/^thinker: / || /100%/" | tee "$out/e2e.log"
cp "$e2e/metrics.jsonl" "$out/e2e_metrics.jsonl" 2>/dev/null
rm -rf "$e2e"

echo "== 3. bench_stages: torch.compile, configured precision"
timeout "${COMPILE_S:-480}" $py lab/bench_stages.py --compile on --json "$out/bench_compile.json" 2>&1 \
  | tee "$out/bench_compile.log"
