#!/usr/bin/env bash
# The live benchmark behind the README's sim-vs-live table: calibrate the simulator on live
# LastExit and random-exit runs, choose the best classic rule on val with the calibrated cluster,
# run LastExit, that rule and the shipped PPO live on the test images, and put the simulator
# beside them.
#
# Interleaved: after a first calibration (which picks the rule and sets the evaluation runs'
# arrival rate), ROUNDS rounds each run a calibration chunk of each calibration policy and then a
# chunk of each evaluated policy, each with the round's own seed; the final fit uses only the
# calibration chunks. Why: this shared machine's speed drifts by 10-20% from one minute to the
# next, and where requests queue that moves the waits by tens of percent; calibrating and
# evaluating in alternation puts the same drift on both sides.
# Run it on a quiet machine: every live figure depends on the load. About 13 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/live}
SCEN=${SCEN:-steady-stream}
# Requests per evaluated policy, over all rounds, drawn from the 1,000 shipped test images. Why
# 3,000: a run's mean wait is decided by its few longest queues, so more requests measure it with
# less noise. CAL: requests per calibration policy, over all rounds.
N=${N:-3000}
CAL=${CAL:-1000}
ROUNDS=${ROUNDS:-6}
PPO=${PPO:-ppo-$SCEN}              # shipped agent trained on this scenario
mkdir -p "$OUT"
common=(--backbone checkpoints/backbone-parallel.pt --scenario "$SCEN" --trace cifar10-test)
name() { echo "${1//[:.]/_}"; }
# Calibration policies: LastExit, and one that leaves at every exit (random:0.35), so the fit
# sees requests of every length and not only the stage sequence of one policy.
CAL_POLICIES=(last-exit random:0.35)
first=()
for P in "${CAL_POLICIES[@]}"; do
  $PY -m experiments.run_live "${common[@]}" --policy "$P" --requests "$CAL" --seed 100 \
      --out "$OUT/first-cal-$(name "$P").json"
  first+=("$OUT/first-cal-$(name "$P").json")
done
$PY -m experiments.calibrate_cluster "${first[@]}" --name live-2core --out "$OUT/cluster.json"
# The agent's decision time under live load (slower than timed offline), from a run of its own.
$PY -m experiments.run_live "${common[@]}" --config "$OUT/cluster.json" --policy "$PPO" \
    --requests 500 --seed 100 --out "$OUT/cal-decisions.json"
RULE=$($PY -m experiments.best_rule --scenario "$SCEN" --profile "$OUT/cluster.json")
echo "best rule on val: $RULE"
cal=()
runs=()
for ((r = 1; r <= ROUNDS; r++)); do
  echo "round $r of $ROUNDS"
  for P in "${CAL_POLICIES[@]}"; do
    $PY -m experiments.run_live "${common[@]}" --policy "$P" --requests $((CAL / ROUNDS)) \
        --seed $((100 + r)) --out "$OUT/cal-$(name "$P")-r$r.json"
    cal+=("$OUT/cal-$(name "$P")-r$r.json")
  done
  for P in last-exit "$RULE" "$PPO"; do
    $PY -m experiments.run_live "${common[@]}" --config "$OUT/cluster.json" --policy "$P" \
        --requests $((N / ROUNDS)) --seed "$r" --out "$OUT/live-$(name "$P")-r$r.json"
    runs+=("$OUT/live-$(name "$P")-r$r.json")
  done
done
$PY -m experiments.calibrate_cluster "${cal[@]}" --name live-2core \
    --out "$OUT/cluster-final.json" --decision-runs "$OUT/cal-decisions.json" \
    --evaluate "${runs[@]}" --table "$OUT/sim-vs-live.md" --timeline "$OUT/timeline.png" \
    ${README:+--readme}
