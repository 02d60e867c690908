#!/bin/bash
# The GPU recipe: both shipped backbones distilled from a stronger teacher, on one GPU in ~10 minutes.
#   bash experiments/train_backbones_gpu.sh [CIFAR-10 source] [teacher seconds] [student seconds]
# (0 teacher seconds: no teacher, each student self-distilled from its deepest exit)
# 1. two short epochs of each network on 8,192 images check the GPU path and time an epoch;
# 2. the teacher, a WRN-16-4 with an exit after every block (runs/gpu/teacher.pt, not shipped):
#    as many epochs as fit its seconds (at most 40);
# 3. the pipeline WRN-16-2 and the 2 x WRN-16-1 branches side by side, each distilled from the
#    teacher (KD + attention transfer after the same block): as many epochs as fit (at most 120),
#    shipped to checkpoints/ with their MANIFEST entries.
# Then, on any machine: export_traces for both backbones, and report_backbone.
# PRESET=tiny runs the same steps on a CPU in seconds (the test does); WORK moves runs/gpu, SHIP
# checkpoints/, SAMPLE sets the short runs' images; TRAIN_ARGS go to every run: a second run of
# the script in the same WORK stops at its first finished step unless TRAIN_ARGS=--resume (each
# step then continues or reuses its run; a retrained teacher needs a fresh WORK).
set -euo pipefail
DATA=${1:-../shared/data/cifar10-jpeg.tar.gz}
TEACHER_SECONDS=${2:-150}
STUDENT_SECONDS=${3:-200}
PRESET=${PRESET:-gpu}
WORK=${WORK:-runs/gpu}
SAMPLE=${SAMPLE:-8192}
SHIP=${SHIP:-checkpoints}
mkdir -p "$WORK"
train() {
  python -m experiments.train_backbone --preset "$PRESET" --data "$DATA" --runs-dir "$WORK" \
    --progress false ${TRAIN_ARGS:-} "$@"
}
teacher=(--topology pipeline --widen 4 --exits all --kd-alpha 0.5)
# epochs that fit SECONDS, from the last timed epoch of a short run on SAMPLE images (scaled to
# the 45,000 training images left beside the default 5,000 val images)
fit_epochs() {  # run-name seconds most
  python - "$WORK/$1/last.pt" "$2" "$3" "$SAMPLE" <<'PY'
import sys, torch
history = torch.load(sys.argv[1], weights_only=True)["history"]
seconds, most, sample = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
per_epoch = history[-1]["seconds"] * 45000 / sample
print(max(1, min(most, int(seconds // per_epoch))))
PY
}

students=()
echo "== short runs: the GPU path, and an epoch's time"
taught=(--kd-alpha 0.5)  # without a teacher (0 teacher seconds): self-distillation
if (( TEACHER_SECONDS > 0 )); then
  train "${teacher[@]}" --max-train-images "$SAMPLE" --epochs 2 --run-name short-teacher \
    --output "$WORK/short-teacher.pt"
  taught=(--teacher "$WORK/short-teacher.pt")
fi
for topology in pipeline parallel; do
  train --topology $topology "${taught[@]}" --max-train-images "$SAMPLE" \
    --epochs 2 --run-name short-$topology --output "$WORK/short-$topology.pt" &
  students+=($!)
done
for pid in "${students[@]}"; do wait "$pid"; done
student_epochs=$(fit_epochs short-pipeline "$STUDENT_SECONDS" 120)
parallel_epochs=$(fit_epochs short-parallel "$STUDENT_SECONDS" 120)
(( parallel_epochs < student_epochs )) && student_epochs=$parallel_epochs
if (( TEACHER_SECONDS > 0 )); then
  teacher_epochs=$(fit_epochs short-teacher "$TEACHER_SECONDS" 40)
  echo "== teacher: $teacher_epochs epochs"
  train "${teacher[@]}" --epochs "$teacher_epochs" --run-name teacher --output "$WORK/teacher.pt"
  taught=(--teacher "$WORK/teacher.pt")
fi
echo "== students: $student_epochs epochs, ${taught[*]}"
students=()
for topology in pipeline parallel; do
  train --topology $topology "${taught[@]}" --epochs "$student_epochs" \
    --output "$SHIP/backbone-$topology.pt" &
  students+=($!)
done
for pid in "${students[@]}"; do wait "$pid"; done
