#!/usr/bin/env bash
# Every GPU measurement the README and the open issues ask for, in stages that each fit one
# 10-minute call on a lent GPU machine. Results land in $OUT (default ./gpu_out), at most 3 files a
# stage (the device returns 8): <stage>.log with every table, <stage>.md summaries, curves_*.png.
#
#   bash tools/gpu_session.sh bench      # inference/training/loader tables vs torchvision, the sweep (~8 min)
#   bash tools/gpu_session.sh train      # R50-FPN then R101-C4 on the larger synthetic set, AMP, tools/test.py
#   bash tools/gpu_session.sh video      # tools/video.py frames/s at the clip's size and 1280x720 (needs train)
#   bash tools/gpu_session.sh ablation   # tools/ablation.py on the synthetic set (two trainings + 4 test rows)
# Config overrides after the stage go to train/ablation (e.g. `train solver.max_iter=1500` when the
# first stage shows the default schedule would not fit a 10-minute call).
#
# Here, once: `bash ../shared/tools/device-wheels.sh` (pycocotools/albumentations wheels into .whl/) and
# `mkdir -p .gpu_data && cp ../shared/testdata/mmcv/tests/data/test.mp4 .gpu_data/` (the video stage's
# clip; ../shared does not travel). On the device, carry [.whl, .gpu_data] and run e.g.
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1; bash tools/gpu_session.sh bench
# Trained models stay in output/ while the machine is warm: run train before video and ablation.
# SMOKE=1 shrinks every stage to seconds on a CPU, to check the script itself.
set -euo pipefail
stage=${1:?usage: tools/gpu_session.sh bench|train|video|ablation [key=value ...]}
shift
EXTRA=("$@")  # config overrides for the train/ablation stages, e.g. solver.max_iter=1500
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log() { echo "[gpu_session $(date +%H:%M:%S)] $*"; }

if [[ "${SMOKE:-0}" == 1 ]]; then
  BENCH=(--device cpu --size 128x160 --iters 1 --warmup 1)
  TRAIN=(solver.max_iter=2 solver.warmup_iters=1 solver.eval_period=0 solver.checkpoint_period=2
         solver.ims_per_batch=2 data.num_workers=0 input.min_size_train=[96] input.max_size_train=128
         input.min_size_test=96 input.max_size_test=128 model.backbone.depth=18
         'data.train.datasets=[{name: SyntheticDataset, root: synthetic_smoke, split: train, num_images: 8, num_classes: 6, image_size: [96, 128]}]'
         'data.val.datasets=[{name: SyntheticDataset, root: synthetic_smoke, split: val, num_images: 4, num_classes: 6, image_size: [96, 128]}]'
         'data.test.datasets=[{name: SyntheticDataset, root: synthetic_smoke, split: val, num_images: 4, num_classes: 6, image_size: [96, 128]}]')
  VIDEO=(--device cpu --max-frames 4)
  TRAIN+=(model.rpn.post_nms_topk_test=50)
  SCALES=64,96,128
  LOW=fp32  # bf16 without bf16 CPU instructions takes minutes
  MIXED=fp32
  BOTH=fp32
else
  BENCH=()
  TRAIN=()
  VIDEO=(--device cuda)
  SCALES=320,448,576
  LOW=bf16
  MIXED=bf16,fp16
  BOTH=fp32,bf16
fi
# the device returns at most 8 files from $OUT: per stage one log, one summary and the curves
exec > >(tee "$OUT/$stage.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
work=output/gpu_session  # per-run logs and JSON, on the machine only
mkdir -p "$work"

case "$stage" in
bench)
  log "R50-FPN inference, detkit vs torchvision (same weights, same inputs)"
  python tools/benchmark.py configs/frcnn_r50_fpn_coco.yaml --compare torchvision --batch-sizes 1,8 \
    --precision $BOTH "${BENCH[@]}"
  log "R50-FPN inference with frozen BN folded and channels_last"
  python tools/benchmark.py configs/frcnn_r50_fpn_coco.yaml --batch-sizes 1,8 --precision $LOW --fuse-bn \
    --channels-last "${BENCH[@]}"
  log "R101-C4 (300 proposals), without and with refinement + context (the seed system)"
  python tools/benchmark.py configs/frcnn_r101_coco.yaml --batch-sizes 1 --precision $BOTH \
    model.roi_heads.refine_iterations=0 model.roi_heads.context=false "${BENCH[@]}"
  python tools/benchmark.py configs/frcnn_r101_coco.yaml --batch-sizes 1 --precision $LOW "${BENCH[@]}"
  log "R50-FPN training step, batch 8, mixed precision"
  python tools/benchmark.py configs/frcnn_r50_fpn_coco.yaml --train --compare torchvision --batch-sizes 8 \
    --precision $MIXED "${BENCH[@]}"
  log "time vs image size, batch size and proposals"
  python tools/benchmark.py configs/frcnn_r50_fpn_coco.yaml --sweep --precision $LOW "${BENCH[@]}"
  log "training data loader (default workers) on the synthetic set"
  python tools/benchmark.py configs/synthetic/frcnn_r50_fpn_synth.yaml --loader "${TRAIN[@]}" "${EXTRA[@]}"
  ;;
train)
  for name in frcnn_r50_fpn_synth frcnn_r101_c4_synth; do
    dir=output/$name
    log "training $name"
    # --resume: a re-run (say after a call ran out of time) continues from the last checkpoint
    python tools/train.py configs/synthetic/$name.yaml --output-dir "$dir" --resume "${TRAIN[@]}" "${EXTRA[@]}" \
      > "$work/train_$name.log" 2>&1 || { tail -30 "$work/train_$name.log"; exit 1; }
    grep -E "INFO\] (iter .*/|eval|train:|best)|^ *[0-9]\.[0-9]{3} \||^ *[0-9]+ \| val" "$work/train_$name.log" | tail -40
    for prec in fp32 bf16; do
      p=test.precision=$prec
      [[ $prec == bf16 ]] && p=test.precision=$LOW
      log "tools/test.py $name ($p)"
      python tools/test.py configs/synthetic/$name.yaml --weights "$dir/model_final.pth" \
        --output-dir "$dir/test_$prec" "$p" "${TRAIN[@]}" "${EXTRA[@]}" > "$work/test_${name}_$prec.log" 2>&1 \
        || { tail -30 "$work/test_${name}_$prec.log"; exit 1; }
      grep -E "images in|^ *AP \||^ *[0-9]\.[0-9]{3} \|" "$work/test_${name}_$prec.log"
    done
    cp "$dir/curves.png" "$OUT/curves_$name.png"
  done
  ;;
video)
  # ../shared does not travel to the device machine: copy the clip into .gpu_data/ (git-ignored) and carry it
  clip=../shared/testdata/mmcv/tests/data/test.mp4
  [[ -f $clip ]] || clip=.gpu_data/test.mp4
  [[ -f $clip ]] || { echo "reference clip not found: ../shared/testdata/mmcv/tests/data/test.mp4 or $clip" >&2; exit 1; }
  python - "$work/clip_720p.mp4" "$clip" <<'PY'
import sys, cv2
out, src = sys.argv[1:3]
cap = cv2.VideoCapture(src)
w = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), cap.get(cv2.CAP_PROP_FPS) or 25, (1280, 720))
while True:
    ok, frame = cap.read()
    if not ok:
        break
    w.write(cv2.resize(frame, (1280, 720)))
w.release()
PY
  for name in frcnn_r50_fpn_synth frcnn_r101_c4_synth; do
    for input in "$clip" "$work/clip_720p.mp4"; do
      for bs in 1 4; do
        tag=${name}_$(basename "$input" .mp4)_b$bs
        # the network sees each video at its own size (294x240 clip; 1280x720)
        if [[ $input == "$clip" ]]; then size=(input.min_size_test=240 input.max_size_test=294)
        else size=(input.min_size_test=720 input.max_size_test=1280); fi
        log "video $tag"
        python tools/video.py "output/$name/model_final.pth" --input "$input" --batch-size $bs --no-progress \
          --output "$work/$tag.mp4" --stats-json "$work/video_$tag.json" "${VIDEO[@]}" "${size[@]}" \
          > "$work/video_$tag.log" 2>&1 || { tail -30 "$work/video_$tag.log"; exit 1; }
      done
    done
  done
  python - "$work" <<'PY' | tee "$OUT/video.md"
import glob, json, os, sys
print("| model | input | batch | frames | pipeline frames/s (decode+model+draw+write) | model-only frames/s | device |")
print("|---|---|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(sys.argv[1], "video_*.json"))):
    s = json.load(open(path))
    tag = os.path.basename(path)[6:-5]
    model, rest = tag.split("_synth_")
    source, batch = rest.rsplit("_b", 1)
    size = "1280x720" if "720p" in source else "294x240 (clip)"
    print(f"| {model} | {size} | {batch} | {s['frames']} | {s['pipeline_fps']:.1f} | {s['model_fps']:.1f} | {s['device']} |")
PY
  ;;
ablation)
  python tools/ablation.py configs/synthetic/frcnn_r101_c4_synth.yaml --output-dir output/ablation \
    --scales "$SCALES" --flip --resume "${TRAIN[@]}" "${EXTRA[@]}" > "$work/ablation.log" 2>&1 \
    || { tail -30 "$work/ablation.log"; exit 1; }
  grep -E "images in" "$work/ablation.log"
  cp output/ablation/ablation.md "$OUT/ablation.md"
  cat "$OUT/ablation.md"
  ;;
*)
  echo "unknown stage '$stage': bench | train | video | ablation" >&2
  exit 2
  ;;
esac
log "stage $stage done; results in $OUT"
