#!/usr/bin/env bash
# The live benchmark behind the README's sim-vs-live table: calibrate the simulator on live
# LastExit and random-exit runs, choose the best classic rule on val with the calibrated cluster, run LastExit, that
# rule and the shipped PPO live on the test images, and put the simulator beside them.
# Run it on a quiet machine: every live figure depends on the load. About 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/live}
SCEN=${SCEN:-steady-stream}
# Requests per policy, drawn from the 1,000 shipped test images. Why 3,000: a run's mean wait is
# decided by its few longest queues, so a longer run measures it with less noise (and a long run
# is what showed that the record rewrites, then done while requests waited, grew with the run).
N=${N:-3000}
PPO=${PPO:-ppo-$SCEN}              # shipped agent trained on this scenario
mkdir -p "$OUT"
common=(--backbone checkpoints/backbone-parallel.pt --scenario "$SCEN" --trace cifar10-test)
# Calibration runs: LastExit, and a policy that leaves at every exit (random:0.35), so the fit
# sees requests of every length and not only the stage sequence of one policy.
cal=()
for P in last-exit random:0.35; do
  $PY -m experiments.run_live "${common[@]}" --policy "$P" --requests 1000 --seed 100 \
      --out "$OUT/cal-${P//[:.]/_}.json"
  cal+=("$OUT/cal-${P//[:.]/_}.json")
done
$PY -m experiments.calibrate_cluster "${cal[@]}" --name live-2core --out "$OUT/cluster.json"
# The agent's decision time under live load (slower than timed offline), from a run of its own.
$PY -m experiments.run_live "${common[@]}" --config "$OUT/cluster.json" --policy "$PPO" \
    --requests 500 --seed 100 --out "$OUT/cal-decisions.json"
RULE=$($PY -m experiments.best_rule --scenario "$SCEN" --profile "$OUT/cluster.json")
echo "best rule on val: $RULE"
runs=()
for P in last-exit "$RULE" "$PPO"; do
  $PY -m experiments.run_live "${common[@]}" --config "$OUT/cluster.json" --policy "$P" \
      --requests "$N" --seed 0 --out "$OUT/live-${P//[:.]/_}.json"
  runs+=("$OUT/live-${P//[:.]/_}.json")
done
$PY -m experiments.calibrate_cluster "${cal[@]}" --name live-2core --out "$OUT/cluster.json" \
    --decision-runs "$OUT/cal-decisions.json" --evaluate "${runs[@]}" --table "$OUT/sim-vs-live.md" ${README:+--readme}
