"""Benchmark every exit policy on the test trace: learned agents against the rules, per scenario.

Rules are swept over their thresholds (a curve each), shipped agents are evaluated at every
latency weight found in checkpoints/agents, RandomExit is matched to each agent's compute, and
LastExit and the Oracle bound the picture. Operating points are chosen on the val trace and
measured on test. Writes a CSV of every point, a Markdown table, headline figures (JSON) and
PNG plots under --out; prints the table.

    python -m experiments.benchmark --quick                  # shipped checkpoints, < 5 minutes
    python -m experiments.benchmark --quick --update-readme  # also refresh README's block
    python -m experiments.benchmark --trace synthetic        # no network trace needed
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distree_env.config import SCENARIOS, EnvConfig
from distree_env.manifest import checkpoints_dir
from distree_env.trace import resolve_trace
from experiments.benchmarking import plots, report
from experiments.benchmarking.analysis import TOLERANCE, headline, summarize
from experiments.benchmarking.policies import (
    PolicySpec,
    agent_file,
    baseline_specs,
    discover_agents,
    learned_specs,
    rule_specs,
)
from experiments.benchmarking.runner import BenchmarkPlan, run_benchmark
from experiments.cli import fail, parse_args

#: DistrEE (Peng et al., GLOBECOM 2024): 27.6% less computation at accuracy comparable to
#: running every stage.
PAPER_COMPUTE_SAVING = 0.276
#: (seeds, requests per evaluation, thresholds per rule) of --quick and of the full run.
QUICK = (3, 8192, 16)
FULL = (5, 10000, 32)
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BenchmarkArgs:
    """Benchmark learned exit policies against the rules on the test trace, per resource
    scenario: CSV, Markdown table, headline figures and plots under --out."""

    quick: bool = field(
        default=False,
        metadata={
            "help": f"fewer seeds, requests and thresholds {QUICK} instead of {FULL}: < 5 min"
        },
    )
    scenarios: tuple[str, ...] = field(
        default=SCENARIOS, metadata={"help": "resource scenarios", "choices": SCENARIOS}
    )
    seeds: int | None = field(
        default=None,
        metadata={
            "help": f"evaluation seeds 0..N-1 (unset: {QUICK[0]} with --quick, else {FULL[0]})"
        },
    )
    requests: int | None = field(
        default=None,
        metadata={
            "help": f"requests per evaluation (unset: {QUICK[1]} with --quick, else {FULL[1]})"
        },
    )
    thresholds: int | None = field(
        default=None,
        metadata={"help": f"thresholds per rule (unset: {QUICK[2]} with --quick, else {FULL[2]})"},
    )
    trace: str = field(
        default="cifar10-test",
        metadata={"help": "test trace: a shipped name, 'synthetic...' or an .npz path"},
    )
    val_trace: str = field(
        default="auto",
        metadata={
            "help": "trace to choose operating points and threshold grids on: 'auto' (the test "
            "trace's val counterpart), 'none' (choose on test) or a trace"
        },
    )
    agents: tuple[str, ...] = field(
        default=("auto",),
        metadata={
            "help": "learned agents: 'auto' (every agent in checkpoints/agents), 'none', or names "
            "and paths (a file named ALGO_lwW.zip is taken as trained at latency weight W)"
        },
    )
    trust: bool = field(
        default=False,
        metadata={"help": "load agent archives not listed in checkpoints/MANIFEST.json"},
    )
    out: str = field(default="results", metadata={"help": "output folder"})
    update_readme: bool = field(
        default=False,
        metadata={"help": "replace README.md's benchmark block with the table and the main plot"},
    )
    readme: str = field(
        default=str(REPO / "README.md"), metadata={"help": "README to update with --update-readme"}
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if not self.scenarios or len(set(self.scenarios)) != len(self.scenarios):
            raise ValueError(f"--scenarios {' '.join(self.scenarios)}: give each scenario once")
        for name, value, high in (
            ("seeds", self.seeds, 1000),
            ("requests", self.requests, 10**7),
            ("thresholds", self.thresholds, 1000),
        ):
            low = 2 if name == "thresholds" else 1
            if value is not None and not low <= value <= high:
                raise ValueError(f"--{name} {value}: must be an integer in [{low}, {high}]")
        if not self.out.strip():
            raise ValueError("--out: must be a folder name, got an empty string")
        if ("auto" in self.agents or "none" in self.agents) and len(self.agents) > 1:
            raise ValueError(f"--agents {' '.join(self.agents)}: 'auto' and 'none' stand alone")

    def sizes(self) -> tuple[int, int, int]:
        """(seeds, requests, thresholds) after the --quick defaults."""
        base = QUICK if self.quick else FULL
        given = (self.seeds, self.requests, self.thresholds)
        return tuple(v if v is not None else d for v, d in zip(given, base, strict=True))


def val_counterpart(trace: str) -> str | None:
    """The val split of a test trace: ``X-test`` -> ``X-val`` (names and ``.npz`` paths), and
    ``synthetic`` <-> ``synthetic:seed=1`` (the agents' convention); None when unknown."""
    if trace == "synthetic":
        return "synthetic:seed=1"
    if trace == "synthetic:seed=1":
        return "synthetic"
    stem, suffix = (trace[:-4], ".npz") if trace.endswith(".npz") else (trace, "")
    for test, val in (("-test", "-val"), ("_test", "_val")):
        if stem.endswith(test):
            return stem[: -len(test)] + val + suffix
    return None


def _policies(
    args: BenchmarkArgs, grid_trace: Any, thresholds: int, obs_dim: int, default_lw: float
) -> tuple[list[PolicySpec], list[str]]:
    """Rule sweeps, baselines and learned agents; notes on agents that were skipped."""
    from agents import load_agent

    specs = [*baseline_specs(), *rule_specs(grid_trace, thresholds)]
    notes: list[str] = []
    if args.agents == ("none",):
        return specs, notes
    if args.agents == ("auto",):
        found = discover_agents(checkpoints_dir() / "agents", default_lw)
        if not found:
            notes.append(f"no learned agents in {checkpoints_dir() / 'agents'}: rules only")
    else:
        found = [agent_file(ref, default_lw) for ref in args.agents]
    for spec in learned_specs(found, lambda ref: load_agent(ref, trust=args.trust)):
        try:
            policy = spec.build()
        except ValueError as exc:
            if args.agents != ("auto",):
                raise
            notes.append(f"skipped {spec.name}: {exc}")
            continue
        _one_thread()
        space = getattr(getattr(policy, "model", None), "observation_space", None)
        if space is not None and space.shape != (obs_dim,):
            problem = (
                f"{spec.name} expects observations of shape {space.shape}, the trace "
                f"gives ({obs_dim},): it was trained for another network or cluster"
            )
            if args.agents != ("auto",):
                raise ValueError(problem)
            notes.append(f"skipped {problem}")
            continue
        specs.append(spec)
    return specs, notes


def _one_thread() -> None:
    """Torch on 1 thread: small forward passes gain nothing from more and the machine is shared."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(BenchmarkArgs, argv)
    seeds, requests, thresholds = args.sizes()
    try:
        test_trace = resolve_trace(args.trace)
    except ValueError as exc:
        fail(f"--trace: {exc} (try --trace synthetic to run without the CIFAR-10 traces)")
    val_name = (
        val_counterpart(args.trace)
        if args.val_trace == "auto"
        else (None if args.val_trace == "none" else args.val_trace)
    )
    try:
        grid_trace = resolve_trace(val_name) if val_name else test_trace
    except ValueError as exc:
        fail(f"--val-trace: {exc} (pass --val-trace none to choose operating points on test)")
    base = EnvConfig(trace=args.trace)
    try:
        from distree_env.vector_env import DistrEEVecEnv

        obs_dim = int(DistrEEVecEnv(1, base).single_observation_space.shape[0])
        specs, notes = _policies(args, grid_trace, thresholds, obs_dim, base.reward.latency_weight)
    except ValueError as exc:
        fail(str(exc))
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--out {args.out}: cannot create the folder ({exc})")
    plan = BenchmarkPlan(
        tuple(specs), args.scenarios, tuple(range(seeds)), requests, base, args.trace, val_name
    )
    rows = _run(plan, args.progress)
    summary = summarize(rows)
    headlines = [headline(summary, s) for s in args.scenarios]
    outputs = _write(args, argv, plan, rows, summary, headlines, test_trace.num_exits)
    _print(plan, summary, headlines, notes, outputs)
    return 0


def _run(plan: BenchmarkPlan, progress: bool) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    with tqdm(
        total=plan.tasks(),
        desc="benchmark",
        unit="eval",
        disable=not progress,
        file=sys.stderr,
        mininterval=0.5,
    ) as bar:

        def tick(label: str) -> None:
            bar.set_postfix_str(label, refresh=False)
            bar.update()

        return run_benchmark(plan, tick)


def _describe(plan: BenchmarkPlan, command: str) -> str:
    chosen = f"`{plan.val_trace}`" if plan.val_trace else "test (no val trace)"
    return (
        f"Generated by `{command}`: trace `{plan.test_trace}`, operating points chosen on "
        f"{chosen}, {len(plan.seeds)} seeds x {plan.n_requests} requests per point, deadline "
        f"{plan.config.deadline_ms:g} ms; mean ± standard deviation over seeds."
    )


def _write(
    args: BenchmarkArgs,
    argv: list[str],
    plan: BenchmarkPlan,
    rows: list[dict],
    summary: list[dict],
    headlines: list[dict],
    num_exits: int,
) -> dict[str, Path]:
    out = Path(args.out)
    paths = {
        name: out / name
        for name in (
            "benchmark_points.csv",
            "benchmark_summary.csv",
            "benchmark.md",
            "benchmark.json",
            "pareto.png",
            "exits.png",
        )
    }
    command = shlex.join(["python", "-m", "experiments.benchmark", *argv])
    table = report.markdown_table(summary, args.scenarios)
    lines = report.headline_lines(headlines, PAPER_COMPUTE_SAVING)
    text = "\n".join([_describe(plan, command), "", *lines, "", table])
    report.write_csv(paths["benchmark_points.csv"], rows)
    report.write_csv(paths["benchmark_summary.csv"], summary)
    figures = "![Pareto curves](pareto.png)\n\n![Exit distribution](exits.png)\n"
    report.write_text(paths["benchmark.md"], f"# Benchmark\n\n{text}\n{figures}")
    report.write_json(
        paths["benchmark.json"],
        {
            "command": command,
            "trace": plan.test_trace,
            "val_trace": plan.val_trace,
            "seeds": list(plan.seeds),
            "requests": plan.n_requests,
            "deadline_ms": plan.config.deadline_ms,
            "paper_compute_saving": PAPER_COMPUTE_SAVING,
            "headlines": headlines,
        },
    )
    title = f"{plan.test_trace}: accuracy vs latency and compute ({len(plan.seeds)} seeds)"
    pareto = plots.pareto_figure(summary, args.scenarios, PAPER_COMPUTE_SAVING, TOLERANCE, title)
    plots.save_png(pareto, paths["pareto.png"])
    plots.save_png(plots.exits_figure(summary, args.scenarios, num_exits), paths["exits.png"])
    if args.update_readme:
        paths["readme"] = _update_readme(Path(args.readme), pareto, text)
    return paths


def _update_readme(readme: Path, pareto: Any, text: str) -> Path:
    """README's block, with the main plot copied beside the README (``results/`` is ignored
    by git, so the README links to ``docs/benchmark.png``)."""
    from experiments.readme import update_block

    image = readme.parent / "docs" / "benchmark.png"
    plots.save_png(pareto, image, dpi=80)
    link = os.path.relpath(image, readme.parent)
    block = f"{text}\n![Accuracy against latency and compute, per scenario]({link})\n"
    try:
        update_block("benchmark", block, readme)
    except (OSError, ValueError) as exc:
        fail(f"--update-readme: {exc}")
    return readme


def _print(
    plan: BenchmarkPlan,
    summary: list[dict],
    headlines: list[dict],
    notes: list[str],
    outputs: dict[str, Path],
) -> None:
    print(report.markdown_table(summary, plan.scenarios))
    print("\n".join(report.headline_lines(headlines, PAPER_COMPUTE_SAVING)))
    for note in notes:
        print(f"note: {note}")
    print(
        f"\nresults: {outputs['benchmark.md']} (table), {outputs['benchmark_points.csv']} "
        f"(every point), {outputs['benchmark.json']} (headline figures)"
    )
    print(f"plots: {outputs['pareto.png']}, {outputs['exits.png']}")
    if "readme" in outputs:
        print(f"README block updated: {outputs['readme']}")
    print(
        "TensorBoard: `python -m experiments.train_agent ...` logs to runs/ "
        "(tensorboard --logdir runs); the shipped agents' metrics are in checkpoints/MANIFEST.json"
    )


if __name__ == "__main__":
    raise SystemExit(main())
