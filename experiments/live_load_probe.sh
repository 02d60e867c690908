#!/usr/bin/env bash
# Is the live devices' slower stage 0 under an early-exit rule a policy effect or a load effect?
# Runs LastExit and RULE at the scenario's arrival rate, LastExit at LOW times it and RULE at HIGH
# times it (so each policy is also seen at the other's device duty), interleaved over ROUNDS
# rounds with one seed per round, then prints stage 0's device compute by the devices' idle time
# (python -m experiments.device_speed). About 5 minutes on 2 cores; run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/live-probe}
SCEN=${SCEN:-steady-stream}
RULE=${RULE:-confidence:0.625}
# The cluster profile fitted to this machine (its arrival rate is a utilisation of the fitted
# service time): live_benchmark.sh writes it.
PROFILE=${PROFILE:-runs/live/cluster-final.json}
N=${N:-300}            # requests per run
ROUNDS=${ROUNDS:-5}
LOW=${LOW:-0.5}
HIGH=${HIGH:-2}
[[ -f "$PROFILE" ]] || { echo "PROFILE=$PROFILE not found: run experiments/live_benchmark.sh first" >&2; exit 2; }
mkdir -p "$OUT"
# One config per load: the profile's overrides plus the arrival utilisation.
config() {
  $PY - "$SCEN" "$1" "$PROFILE" "$OUT/load-$1.json" <<'PY'
import json, sys
from distree_env import EnvConfig
scenario, factor, profile, out = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
overrides = json.load(open(profile))
base = EnvConfig.scenario(scenario).arrivals.utilisation
overrides["arrivals"] = {**overrides.get("arrivals", {}), "utilisation": base * factor}
json.dump(overrides, open(out, "w"))
PY
  echo "$OUT/load-$1.json"
}
ARMS=("last-exit $(config 1)" "$RULE $(config 1)" "last-exit $(config "$LOW")" "$RULE $(config "$HIGH")")
runs=()
for ((r = 1; r <= ROUNDS; r++)); do
  echo "round $r of $ROUNDS"
  for arm in "${ARMS[@]}"; do
    read -r P CFG <<< "$arm"
    rec="$OUT/$(basename "$CFG" .json)-${P//[:.]/_}-r$r.json"
    $PY -m experiments.run_live --scenario "$SCEN" --config "$CFG" --policy "$P" \
        --requests "$N" --seed "$r" --out "$rec" 2>> "$OUT/run_live.log"
    runs+=("$rec")
  done
done
$PY -m experiments.device_speed "${runs[@]}"
