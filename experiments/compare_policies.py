"""Compare every exit policy on the held-out trace: a Markdown table, mean ± std over seeds.

    python -m experiments.compare_policies                          # default env, 5 seeds
    python -m experiments.compare_policies --readme                 # also update README.md

Rules are calibrated on the training trace (``val``; never ``test``), then every policy (rules,
shipped agents, the Oracle) is evaluated on the held-out trace (``cifar10-test`` when shipped)
with the same seeds, so all rows see the same requests and resource fluctuations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from experiments.cli import fail, parse_args


@dataclass(frozen=True)
class Args:
    """Evaluate rules, shipped agents and the Oracle on the held-out trace."""

    config: str | None = field(default=None, metadata={"help": "JSON/YAML of EnvConfig fields"})
    seeds: int = 5
    n_requests: int = field(default=4096, metadata={"help": "requests per seed"})
    calibration_requests: int = 8192
    max_accuracy_loss: float = field(
        default=0.01, metadata={"help": "budget of the 'cheapest' calibration"}
    )
    agents: tuple[str, ...] = field(default=("ppo", "dqn"), metadata={"help": "names or paths"})
    trust: bool = field(default=False, metadata={"help": "load agent files not in the manifest"})
    json_out: str | None = field(default=None, metadata={"help": "also write the results here"})
    readme: bool = field(default=False, metadata={"help": "update README.md's policy table"})

    def __post_init__(self) -> None:
        for name in ("seeds", "n_requests", "calibration_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or value < 1:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag}={value!r} is not allowed: an integer >= 1")
        if not 0.0 <= self.max_accuracy_loss <= 1.0:
            raise ValueError(f"--max-accuracy-loss={self.max_accuracy_loss!r}: must be in [0, 1]")


AGENT, ORACLE = "agent: ", "Oracle (upper bound)"
COLUMNS = (
    ("mean_reward", "reward / request", 3),
    ("accuracy", "accuracy", 3),
    ("compute_saving", "compute saving", 3),
    ("latency_mean_ms", "latency mean (ms)", 1),
    ("latency_p95_ms", "latency p95 (ms)", 1),
    ("qos_rate", "QoS rate", 3),
)


def policies(args: Args, train_config: Any) -> list[tuple[str, Any]]:
    """(label, policy) rows: calibrated rules, loadable agents, the Oracle."""
    from agents import LastExit, Oracle, calibrate_all, load_agent

    cal = calibrate_all(
        train_config, n_requests=args.calibration_requests, max_accuracy_loss=args.max_accuracy_loss
    )
    rows: list[tuple[str, Any]] = [("LastExit", LastExit())]
    for name, c in cal.items():
        rows.append((f"{name}({c.best_reward_param:g}) [best reward]", c.policy("reward")))
        if name in ("ConfidenceThreshold", "EntropyThreshold", "Similarity") and (
            c.cheapest_param is not None
        ):
            loss = f"{100 * args.max_accuracy_loss:g}%"
            rows.append(
                (
                    f"{name}({c.cheapest_param:g}) [cheapest, <= {loss} acc. loss]",
                    c.policy("cheapest"),
                )
            )
    for agent in args.agents:
        try:
            rows.append((f"{AGENT}{agent}", load_agent(agent, trust=args.trust)))
        except ValueError as exc:
            print(f"skipping agent {agent!r}: {exc}")
    rows.append((ORACLE, Oracle()))
    return rows


def markdown(results: dict[str, dict[str, Any]], test_trace: str, seeds: int) -> str:
    head = "| policy | " + " | ".join(title for _, title, _ in COLUMNS) + " | exit fractions |"
    lines = [
        f"Held-out trace `{test_trace}`, mean ± std over {seeds} seeds.",
        "",
        head,
        "|" + "---|" * (len(COLUMNS) + 2),
    ]
    for label, r in results.items():
        cells = [
            f"{r[key]['mean']:.{digits}f} ± {r[key]['std']:.{digits}f}"
            for key, _, digits in COLUMNS
        ]
        exits = " / ".join(f"{f:.2f}" for f in r["exit_fractions"])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {exits} |")
    return "\n".join(lines + ["", *verdict(results)]) + "\n"


def verdict(results: dict[str, dict[str, Any]]) -> list[str]:
    """Each agent against the best rule (paired over the same seeds) and the Oracle."""
    oracle = results[ORACLE]["per_seed_reward"]
    rules = {k: v for k, v in results.items() if not k.startswith(AGENT) and k != ORACLE}
    best = max(rules, key=lambda k: results[k]["mean_reward"]["mean"])
    lines = []
    for label, r in results.items():
        if label.startswith(AGENT):
            diff = np.subtract(r["per_seed_reward"], rules[best]["per_seed_reward"])
            gap = np.subtract(oracle, r["per_seed_reward"])
            lines.append(
                f"- {label[len(AGENT) :]}: reward {diff.mean():+.3f} per request against "
                f"the best calibrated rule, {best} (per seed {diff.min():+.3f} to "
                f"{diff.max():+.3f}); {gap.mean():.3f} below the Oracle."
            )
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(Args, argv)
    import torch

    torch.set_num_threads(1)
    from agents import METRICS, evaluate
    from agents.splits import check_not_test, held_out_trace
    from experiments.train_agent import load_env_config

    try:
        train_config = load_env_config(args.config)
        check_not_test(train_config, "compare_policies (calibration)")
        test_config = train_config.replace(trace=held_out_trace(train_config.trace))
        rows = policies(args, train_config)
    except ValueError as exc:
        fail(str(exc))
    results: dict[str, dict[str, Any]] = {}
    for label, policy in rows:
        runs = [evaluate(policy, test_config, args.n_requests, seed) for seed in range(args.seeds)]
        summary: dict[str, Any] = {
            key: {
                "mean": float(np.mean([r[key] for r in runs])),
                "std": float(np.std([r[key] for r in runs])),
            }
            for key in METRICS
        }
        summary["exit_fractions"] = np.mean([r["exit_fractions"] for r in runs], axis=0).tolist()
        summary["per_seed_reward"] = [r["mean_reward"] for r in runs]
        results[label] = summary
    table = markdown(results, test_config.trace, args.seeds)
    print(table)
    if args.json_out:
        from distree_env.io import atomic_write_text

        atomic_write_text(args.json_out, json.dumps(results, indent=2) + "\n")
    if args.readme:
        from experiments.readme import update_block

        update_block("policy-table", table)
    return results


if __name__ == "__main__":
    main()
