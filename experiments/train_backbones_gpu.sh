#!/bin/bash
# The GPU recipe: both backbones and their traces on one GPU (sized for an H100 in ~10 minutes).
#   bash experiments/train_backbones_gpu.sh [CIFAR-10 source]
# bf16 autocast, training images held on the GPU, cuDNN autotuning; a WRN-16-8 pipeline backbone
# (self-distilled) teaches 2 x WRN-16-4 parallel branches (KD + attention transfer).
set -euo pipefail
DATA=${1:-../shared/data/cifar10-jpeg.tar.gz}
python -m experiments.train_backbone --preset gpu --topology pipeline --kd-alpha 0.5 \
  --data "$DATA" --threads 8
python -m experiments.train_backbone --preset gpu --topology parallel \
  --teacher checkpoints/backbone-pipeline.pt --data "$DATA" --threads 8
for topology in pipeline parallel; do
  python -m experiments.export_traces --backbone "checkpoints/backbone-$topology.pt" --data "$DATA"
done
python -m experiments.report_backbone
