"""Benchmark every exit policy per scenario: learned agents, the best rules, and the Oracle.

Learned agents face the best non-learned policy that sees the same observation.

Per scenario: the strong baselines (``agents.calibrate_baselines``) are calibrated on the val
split, with several calibration seeds (draws), each baseline keeping the draw best on the val
seeds; the classic rules are swept over thresholds placed on val, and every policy (rules,
baselines, the scenario's learned agents, last exit, Oracle) is evaluated on val (seeds 0 to N-1)
and on test (as many held-out seeds: ``agents.splits.held_out_seeds``). The agents go first on
val: the best one's accuracy (on the calibration seeds) is where
``LoadAware[accuracy]`` is calibrated, the load-aware opponent of the deadline comparison at equal
accuracy. Every choice (the best baseline, the best agent, operating points, the point of equal
accuracy) is made on val; test only measures. Writes a CSV of every point, a Markdown
table, headline figures (JSON) and PNG plots under --out; prints the headline. This is the one
source of the README's results block.

    python -m experiments.benchmark --quick                  # `make demo`: 1-2 min on 2 cores
    python -m experiments.benchmark --update-readme          # the full run behind the README
    python -m experiments.benchmark --update-readme --resume # continue it after a stop
    python -m experiments.benchmark --trace synthetic:seed=1 # no network trace needed
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.splits import check_not_test, held_out_trace, val_counterpart
from distree_env.config import SCENARIOS, EnvConfig
from distree_env.dynamics import tables_for
from distree_env.io import (
    atomic_write_bytes,
    atomic_write_text,
    require_output_dir,
    require_output_file,
)
from distree_env.manifest import checkpoints_dir
from distree_env.traces import resolve_trace
from experiments.benchmarking import plots, report
from experiments.benchmarking.analysis import TOLERANCE, headline, summarize
from experiments.benchmarking.finished import FINISHED_DIR, Finished
from experiments.benchmarking.policies import (
    AgentFile,
    agent_file,
    check_distinct_names,
    discover_agents,
)
from experiments.benchmarking.runner import BenchmarkPlan, CalibrationSizes, run_benchmark
from experiments.cli import (
    FALSE_WORDS,
    MAX_JOBS,
    MAX_REQUESTS,
    TRUE_WORDS,
    fail,
    one_line_errors,
    parse_args,
    require_int,
)

#: DistrEE (Peng et al., GLOBECOM 2024): 27.6% less computation at accuracy comparable to
#: running every stage.
PAPER_COMPUTE_SAVING = 0.276
#: (seeds, requests per evaluation, thresholds per rule) of --quick and of the full run.
QUICK = (2, 2048, 4)
FULL = (5, 4096, 16)
#: Baseline calibration of --quick and of the full run.
QUICK_CALIBRATION = CalibrationSizes(
    n_requests=1024,
    points=4,
    rounds=1,
    data_steps=16_384,
    features=("max_prob", "entropy"),
    draws=1,
)
#: Requests each stream answers before an evaluation counts, in the full run and --quick: a
#: stream's queue starts empty, and under bursty load it takes a few hundred requests to reach
#: its steady state; counted from the idle start, figures flatter every policy that lets a queue
#: build. --quick counts from the idle start, to stay a short demo.
FULL_WARMUP, QUICK_WARMUP = 256, 0
#: What a --quick run says of its own verdicts.
QUICK_NOTE = (
    "a --quick run (the demo): fewer seeds, requests and calibration steps, counted from each "
    "stream's idle start, which flatters policies that let a queue build; its verdicts are "
    "indicative only, the README's come from the full run"
)
#: Where the full and the quick run write their results by default.
FULL_OUT, QUICK_OUT = "results", "results/quick"
FULL_CALIBRATION = CalibrationSizes()
REPO = Path(__file__).resolve().parents[1]
#: The files a run writes into ``--out``, by name (the tests check each one).
OUTPUT_FILES = (
    "benchmark_points.csv",
    "benchmark_summary.csv",
    "benchmark.md",
    "benchmark.json",
    "pareto.png",
    "exits.png",
)
#: The scenarios of the headline: the isolated requests of the first version (parity expected)
#: and the load-coupled streams.
DEFAULT_SCENARIOS = (
    "isolated",
    "steady-stream",
    "bursty-stream",
    "wifi-contention",
    "cellular",
    "azure-code",
)


@dataclass(frozen=True)
class BenchmarkArgs:
    """Benchmark learned exit policies against the best non-learned policies, per scenario:
    CSV, Markdown table, headline figures and plots under --out."""

    quick: bool = field(
        default=False,
        metadata={
            "help": f"fewer seeds, requests and thresholds {QUICK} instead of {FULL} and a "
            "smaller calibration (make demo)"
        },
    )
    scenarios: tuple[str, ...] = field(
        default=DEFAULT_SCENARIOS, metadata={"help": "scenarios", "choices": tuple(SCENARIOS)}
    )
    seeds: int | None = field(
        default=None,
        metadata={
            "help": f"evaluation seeds: 0..N-1 on val, N held-out ones on test (unset: "
            f"{QUICK[0]} with --quick, else {FULL[0]})"
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
    calibration_requests: int | None = field(
        default=None,
        metadata={
            "help": "requests per val evaluation while calibrating the baselines (unset: "
            f"{QUICK_CALIBRATION.n_requests} with --quick, else {FULL_CALIBRATION.n_requests})"
        },
    )
    calibration_steps: int | None = field(
        default=None,
        metadata={
            "help": "val transitions the baselines are fitted to (unset: "
            f"{QUICK_CALIBRATION.data_steps} with --quick, else {FULL_CALIBRATION.data_steps})"
        },
    )
    calibration_draws: int | None = field(
        default=None,
        metadata={
            "help": "calibrations per scenario, each with its own seed; every baseline keeps "
            f"the draw best on val (unset: {QUICK_CALIBRATION.draws} with --quick, else "
            f"{FULL_CALIBRATION.draws})"
        },
    )
    warmup: int | None = field(
        default=None,
        metadata={
            "help": "requests each stream answers before an evaluation counts (unset: "
            f"{QUICK_WARMUP} with --quick, else {FULL_WARMUP})"
        },
    )
    trace: str | None = field(
        default=None,
        metadata={
            "help": "test trace: a shipped name (X-test), an .npz path or a synthetic trace with "
            "seed=1 (e.g. synthetic:seed=1), each of which has a val counterpart (unset: the "
            "test trace of the scenarios' network, e.g. cifar10-pipeline-test for pipeline)"
        },
    )
    val_trace: str = field(
        default="auto",
        metadata={
            "help": "trace every choice is made on: 'auto' (the test trace's val counterpart) "
            "or a trace"
        },
    )
    agents: tuple[str, ...] = field(
        default=("auto",),
        metadata={
            "help": "learned agents: 'auto' (every agent in checkpoints/agents), 'none', or names "
            "and paths (ALGO-SCENARIO.zip is evaluated on SCENARIO only, ALGO.zip on all)"
        },
    )
    trust: bool = field(
        default=False,
        metadata={"help": "load agent archives not listed in checkpoints/MANIFEST.json"},
    )
    out: str | None = field(
        default=None,
        metadata={"help": f"output folder (default: {QUICK_OUT} with --quick, so a quick run "
                  f"never replaces a full one, else {FULL_OUT})"},
    )  # fmt: skip
    update_readme: bool = field(
        default=False,
        metadata={"help": "replace README.md's benchmark block with the headline and table"},
    )
    readme: str = field(
        default=str(REPO / "README.md"), metadata={"help": "README to update with --update-readme"}
    )
    jobs: int = field(
        default=min(2, os.cpu_count() or 1),
        metadata={"help": "scenarios evaluated at once, in worker processes"},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    resume: bool = field(
        default=False,
        metadata={"help": "continue a stopped run: take the scenarios it finished for the same "
                  f"arguments, traces and agents (kept in --out/{FINISHED_DIR}/ until the "
                  "outputs are written) and compute the rest; without it every scenario is "
                  "computed afresh"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if not self.scenarios or len(set(self.scenarios)) != len(self.scenarios):
            raise ValueError(f"--scenarios {' '.join(self.scenarios)}: give each scenario once")
        for name, value, high in (
            ("seeds", self.seeds, 1000),
            ("requests", self.requests, MAX_REQUESTS),
            ("thresholds", self.thresholds, 1000),
            ("calibration_requests", self.calibration_requests, MAX_REQUESTS),
            ("calibration_steps", self.calibration_steps, 10**8),
            ("calibration_draws", self.calibration_draws, 100),
            ("warmup", self.warmup, 10**6),
        ):
            if value is not None:
                require_int(name, value, {"thresholds": 2, "warmup": 0}.get(name, 1), high)
        require_int("jobs", self.jobs, 1, MAX_JOBS)
        if self.out is None:
            object.__setattr__(self, "out", QUICK_OUT if self.quick else FULL_OUT)
        if not self.out.strip():
            raise ValueError("--out: must be a folder name, got an empty string")
        require_output_dir(self.out, "--out")  # checked before the work, not after it
        if self.update_readme:
            require_output_file(self.readme, "--readme")
            from experiments.readme import check_block

            check_block("benchmark", Path(self.readme))  # before hours of work, not after
        if ("auto" in self.agents or "none" in self.agents) and len(self.agents) > 1:
            raise ValueError(f"--agents {' '.join(self.agents)}: 'auto' and 'none' stand alone")

    def sizes(self) -> tuple[int, int, int]:
        """(seeds, requests, thresholds) after the --quick defaults."""
        base = QUICK if self.quick else FULL
        given = (self.seeds, self.requests, self.thresholds)
        return tuple(v if v is not None else d for v, d in zip(given, base, strict=True))

    def warmup_requests(self) -> int:
        """Requests per stream before an evaluation counts, after the --quick default."""
        if self.warmup is not None:
            return self.warmup
        return QUICK_WARMUP if self.quick else FULL_WARMUP

    def calibration(self) -> CalibrationSizes:
        """Calibration sizes after the --quick defaults."""
        base = QUICK_CALIBRATION if self.quick else FULL_CALIBRATION
        return dataclasses.replace(
            base,
            n_requests=self.calibration_requests or base.n_requests,
            data_steps=self.calibration_steps or base.data_steps,
            draws=self.calibration_draws or base.draws,
        )


def scenarios_test_trace(scenarios: Sequence[str]) -> str:
    """The test trace of the network that ``scenarios`` are defined on; one line (exit 2) when
    they are defined on different networks, which have different observations."""
    traces = {held_out_trace(EnvConfig.scenario(s).trace): s for s in scenarios}
    if len(traces) > 1:
        pairs = ", ".join(f"{s} on {t}" for t, s in traces.items())
        fail(f"--scenarios: they run on different networks ({pairs}); benchmark them apart")
    return next(iter(traces))


def _agents(
    args: BenchmarkArgs, obs_dim: Callable[[str], int | None]
) -> tuple[list[AgentFile], list[str]]:
    """The learned agents to evaluate (of a benchmarked scenario, loadable, with the observation
    shape of its scenario, ``obs_dim(scenario)``; of every benchmarked one for an agent of no
    scenario) and notes on those skipped. An agent of another scenario is not loaded (a named
    one is noted); two agents of one row name are an error."""
    from agents import load_agent
    from agents.evaluation import observation_mismatch

    notes: list[str] = []
    if args.agents == ("none",):
        return [], notes
    if args.agents == ("auto",):
        found = discover_agents(checkpoints_dir() / "agents")
        if not found:
            notes.append(f"no learned agents in {checkpoints_dir() / 'agents'}: baselines only")
    else:
        found = [agent_file(ref) for ref in args.agents]
    check_distinct_names(found)
    kept = []
    for agent in found:
        benchmarked = agent.scenario is None or agent.scenario in args.scenarios
        if not benchmarked and args.agents == ("auto",):
            continue
        if not benchmarked:
            notes.append(
                f"skipped {agent.ref}: trained for {agent.scenario}, which --scenarios leaves out"
            )
            continue
        try:
            policy = load_agent(agent.ref, trust=args.trust)
        except ValueError as exc:
            if args.agents != ("auto",):
                raise
            notes.append(f"skipped {agent.ref}: {exc}")
            continue
        _one_thread()
        scenarios = args.scenarios if agent.scenario is None else (agent.scenario,)
        dims = sorted({d for d in map(obs_dim, scenarios) if d is not None})
        mismatch = observation_mismatch(policy, [(d,) for d in dims])
        if mismatch is not None:
            problem = f"{agent.ref} {mismatch}"
            if args.agents != ("auto",):
                raise ValueError(problem)
            notes.append(f"skipped {problem}")
            continue
        kept.append(agent)
    return kept, notes


def _observation_dims(config: EnvConfig) -> Callable[[str], int | None]:
    """Observation length of each scenario on ``config``'s trace (its devices, and pipelining
    adds a column); None for a scenario the project does not define."""

    @functools.cache
    def dim(scenario: str) -> int | None:
        if scenario not in SCENARIOS:
            return None
        return len(tables_for(config.with_scenario(scenario)).observation_names)

    return dim


def _one_thread() -> None:
    """Torch on 1 thread: small forward passes gain nothing from more and the machine is shared."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run from command-line ``argv`` (default: ``sys.argv``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(BenchmarkArgs, argv)
    if args.trace is None:
        args = dataclasses.replace(args, trace=scenarios_test_trace(args.scenarios))
    seeds, requests, thresholds = args.sizes()
    base = EnvConfig()
    val_name = val_counterpart(args.trace) if args.val_trace == "auto" else args.val_trace
    if val_name is None:
        fail(f"--val-trace auto: no val counterpart of --trace {args.trace!r}; give --val-trace")
    try:
        test_trace = resolve_trace(args.trace)
    except ValueError as exc:
        fail(f"--trace: {exc} (try --trace synthetic:seed=1 to run without the CIFAR-10 traces)")
    try:
        val_trace = resolve_trace(val_name)  # fail early, with the argument's name
        check_not_test(base.replace(trace=val_name), "--val-trace")
    except ValueError as exc:
        fail(f"--val-trace: {exc}")
    if test_trace.same_samples(val_trace):
        fail(f"--val-trace {val_name!r} holds the same samples as --trace {args.trace!r}: test "
             "must be held out from val")  # fmt: skip
    try:
        agents, notes = _agents(args, _observation_dims(base.replace(trace=args.trace)))
    except ValueError as exc:
        fail(str(exc))
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--out {args.out}: cannot create the folder ({exc})")
    plan = BenchmarkPlan(
        scenarios=args.scenarios,
        seeds=tuple(range(seeds)),
        n_requests=requests,
        config=base,
        test_trace=args.trace,
        val_trace=val_name,
        thresholds=thresholds,
        calibration=args.calibration(),
        agents=tuple(agents),
        trust=args.trust,
        warmup=args.warmup_requests(),
    )
    store = Finished(Path(args.out) / FINISHED_DIR, plan)
    if not args.resume:
        store.clear()
    finished = store.load(plan.scenarios) if args.resume else {}
    if finished:
        print(f"resuming: {', '.join(finished)} taken from {store.folder}", file=sys.stderr)
    try:
        rows, calibrated = _run(plan, args.jobs, args.progress, finished, store.save)
    except ValueError as exc:
        fail(str(exc))
    summary = summarize(rows)
    headlines = [
        headline(summary, rows, s, requests_per_seed=plan.n_requests) for s in args.scenarios
    ]
    outputs = _write(args, argv, plan, rows, summary, headlines, calibrated, test_trace.num_exits)
    store.clear()  # the outputs hold every scenario now
    _print(plan, summary, headlines, [*notes, QUICK_NOTE] if args.quick else notes, outputs)
    return 0


def _run(
    plan: BenchmarkPlan,
    jobs: int,
    progress: bool,
    finished: dict[str, tuple[list, dict]],
    on_finished: Callable[[str, tuple[list, dict]], None],
) -> tuple[list, dict]:
    from tqdm.auto import tqdm

    with tqdm(
        total=len(plan.scenarios),
        desc="benchmark",
        unit="scenario",
        disable=not progress,
        file=sys.stderr,
        mininterval=0.5,
    ) as bar:

        def tick(label: str) -> None:
            bar.set_postfix_str(label, refresh=False)
            bar.update()

        return run_benchmark(plan, jobs, tick, finished, on_finished)


def _without_resume(argv: Sequence[str]) -> list[str]:
    """``argv`` less ``--resume`` (and its value, if given): how a run was continued is not
    part of the command that made its figures."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        name, given = arg.partition("=")[::2]
        resume = len(name) > 4 and "--resume".startswith(name)  # argparse takes --resu too
        if skip:
            skip = False
        elif resume and not given and "=" not in arg:
            skip = i + 1 < len(argv) and argv[i + 1].lower() in (*TRUE_WORDS, *FALSE_WORDS)
        elif not resume:
            out.append(arg)
    return out


def _span(seeds: Sequence[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"


def _warmup(plan: BenchmarkPlan) -> str:
    counted = (
        "counted from each stream's idle start"
        if not plan.warmup
        else f"counted after each stream's first {plan.warmup} requests (its warm-up)"
    )
    return counted + ", every policy meeting the same streams on a seed"


def _describe(plan: BenchmarkPlan, command: str) -> str:
    return (
        f"Generated by `{command}`: every choice (calibrated baselines, best non-learned policy, "
        f"best agent, operating points) made on `{plan.val_trace}`, every figure measured on "
        f"`{plan.test_trace}` (held-out arrival and link traces where a scenario replays "
        f"traces) with held-out seeds (val {_span(plan.split_seeds('val'))}, test "
        f"{_span(plan.split_seeds('test'))}: other resource paths and arrivals), "
        f"{len(plan.seeds)} seeds x {plan.n_requests} requests per point, {_warmup(plan)}; "
        "mean ± standard deviation over seeds. Accuracy and latency count the answered "
        "requests; deadlines met and reward count every request, a drop (at a full queue, a "
        "column of its own) as a missed deadline."
    )


def _write(
    args: BenchmarkArgs,
    argv: list[str],
    plan: BenchmarkPlan,
    rows: list[dict],
    summary: list[dict],
    headlines: list[dict],
    calibrated: dict[str, Any],
    num_exits: int,
) -> dict[str, Path]:
    out = Path(args.out)
    paths = {name: out / name for name in OUTPUT_FILES}
    command = shlex.join(["python", "-m", "experiments.benchmark", *_without_resume(argv)])
    table = report.markdown_table(summary, args.scenarios)
    lines = report.headline_lines(headlines)
    glance = report.glance_table(headlines)
    describe = _describe(plan, command) + (f" Note: {QUICK_NOTE}." if args.quick else "")
    text = "\n".join([describe, "", glance, "", *lines, "", table])
    figures = "![Pareto curves](pareto.png)\n\n![Exit distribution](exits.png)\n"
    headline_json = {
        "command": command,
        "trace": plan.test_trace,
        "val_trace": plan.val_trace,
        "seeds": {split: list(plan.split_seeds(split)) for split in ("val", "test")},
        "requests": plan.n_requests,
        "warmup": plan.warmup,
        "calibrated_baselines": calibrated,
        "headlines": headlines,
    }
    title = f"{plan.test_trace}: accuracy vs latency and compute ({len(plan.seeds)} seeds)"
    pareto = plots.pareto_figure(summary, args.scenarios, PAPER_COMPUTE_SAVING, TOLERANCE, title)
    contents: dict[str, str | bytes] = {
        "benchmark_points.csv": report.csv_text(rows),
        "benchmark_summary.csv": report.csv_text(summary),
        "benchmark.md": f"# Benchmark\n\n{text}\n{figures}",
        "benchmark.json": report.json_text(headline_json),
        "pareto.png": plots.png_bytes(pareto),
        "exits.png": plots.png_bytes(plots.exits_figure(summary, args.scenarios, num_exits)),
    }
    # everything rendered first: a run stopped now leaves the previous set whole, and the
    # files are replaced one after the other within milliseconds, not across the plotting
    for name, content in contents.items():
        write = atomic_write_bytes if isinstance(content, bytes) else atomic_write_text
        write(paths[name], content)
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
    print(report.glance_table(headlines) + "\n")
    print("\n".join(report.headline_lines(headlines)))
    for note in notes:
        print(f"note: {note}")
    print(
        f"\nresults: {outputs['benchmark.md']} (table), {outputs['benchmark_points.csv']} "
        f"(every point), {outputs['benchmark.json']} (headline figures)"
    )
    print(f"plots: {outputs['pareto.png']}, {outputs['exits.png']}")
    if "readme" in outputs:
        print(f"README block updated: {outputs['readme']}")


if __name__ == "__main__":
    raise SystemExit(main())
