"""Per-exit accuracy, compute, traffic and exit-signal quality of the shipped networks.

    python -m experiments.report_backbone [--out docs/backbone.md] [--update-readme]
    python -m experiments.report_backbone --trace mynet-test.npz   # a network of your own

For each topology with shipped traces: per exit, the val and test accuracy, the cumulative FLOPs
and their share of the full network, the bytes that cross the boundary after the stage, and, on
test, the AUC with which each exit criterion separates right from wrong answers (1.0 = perfect,
0.5 = no information; entropy and feature difference count as confident when low). Reads only the
shipped traces and MANIFEST (verified), so it needs no dataset. With ``--trace`` it prints the
same table for a test trace of your own (docs/own-network.md) and its val file beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from experiments.cli import fail, one_line_errors, parse_args

#: Trace name prefix and backbone file of each topology.
TOPOLOGY_FILES = {
    "parallel": ("cifar10", "backbone-parallel.pt"),
    "pipeline": ("cifar10-pipeline", "backbone-pipeline.pt"),
}
#: Exit criteria whose AUC is reported, and whether a high value means "confident".
CRITERIA = {"max_prob": True, "margin": True, "entropy": False, "feature_diff": False}


@dataclass(frozen=True)
class Args:
    """Print (and write) the per-exit table of the shipped CIFAR-10 networks."""

    out: str | None = field(
        default=None,
        metadata={"help": "Markdown output ('' = none; default: docs/backbone.md for the "
                  "shipped networks, none with --trace)"},
    )  # fmt: skip
    update_readme: bool = field(
        default=False, metadata={"help": "write the table into README.md's backbone block"}
    )
    trace: str | None = field(
        default=None,
        metadata={"help": "a test trace of your own (NAME-test.npz, with NAME-val.npz beside "
                  "it): its table instead of the shipped networks'"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.trace is not None and self.update_readme:
            raise ValueError("--update-readme: the README shows the shipped networks, not --trace")


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (Mann-Whitney, ties count half).

    :param score: higher = more likely positive.
    :param positive: boolean labels. NaN when one class is empty, or when the score is constant
        (no criterion there, as the feature difference at the first exit: not an AUC of 0.5).
    """
    score = np.asarray(score, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg or score.size == 0 or score.min() == score.max():
        return float("nan")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # 1-based ranks, ties share their mean
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def criterion_aucs(trace) -> dict[str, list[float]]:
    """Per criterion, per exit: AUC of separating right from wrong answers on ``trace``."""
    from distree_env.dynamics import EXIT_FEATURES, exit_features

    feats, correct = exit_features(trace)
    feats = feats.reshape(trace.n, trace.num_exits, len(EXIT_FEATURES))
    correct = np.asarray(correct).reshape(trace.n, trace.num_exits)
    out = {}
    for name, high_is_confident in CRITERIA.items():
        col = feats[:, :, EXIT_FEATURES.index(name)]
        sign = 1.0 if high_is_confident else -1.0
        out[name] = [auc(sign * col[:, k], correct[:, k]) for k in range(trace.num_exits)]
    return out


def _boundary_bytes(trace, k: int) -> str:
    sent = trace.transfer_bytes[k]
    if trace.topology == "parallel":
        d = trace.num_devices
        up = (
            f"{int(sent[0])} x {d}"
            if (sent == sent[0]).all()
            else "/".join(map(str, sent.astype(int)))
        )
        return f"{up} up, 1 x {d} down"
    if k == trace.num_exits - 1:
        return "-"
    return f"{int(sent.sum()):,}"


def exit_rows(val, test) -> list[str]:
    """The per-exit Markdown table of a network from its val and test traces."""
    cum = np.cumsum(test.stage_flops.sum(axis=1) + test.exit_flops)
    aucs = criterion_aucs(test)
    head = "| exit | val acc | test acc | cum. MFLOPs | compute share | bytes after stage |"
    rule = "|---:|---:|---:|---:|---:|---:|"
    head += "".join(f" AUC {c} |" for c in CRITERIA)
    rule += "---:|" * len(CRITERIA)
    rows = [head, rule]
    for k in range(test.num_exits):
        cells = [
            str(k),
            f"{100 * val.exit_accuracy[k]:.2f}%",
            f"{100 * test.exit_accuracy[k]:.2f}%",
            f"{cum[k] / 1e6:.1f}",
            f"{100 * cum[k] / cum[-1]:.0f}%",
            _boundary_bytes(test, k),
            *(f"{aucs[c][k]:.3f}" if np.isfinite(aucs[c][k]) else "-" for c in CRITERIA),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def topology_table(topology: str, val, test, entry: dict | None) -> str:
    """Markdown section of one topology: the per-exit table and how the network was made."""
    rows = exit_rows(val, test)
    meta = test.metadata
    m = (entry or {}).get("metrics", {})
    cfg = m.get("config", {})
    loss = cfg.get("loss", {})
    layout = (
        f"{test.num_devices} parallel branches fused at every exit by an aggregator"
        if topology == "parallel"
        else f"one backbone cut into {test.num_devices} segments on {test.num_devices} devices"
    )
    lines = [
        f"### {topology}: {meta.get('architecture', '?')} ({layout})",
        "",
        *rows,
        "",
        f"Exits after blocks {meta.get('model', {}).get('exits')} of the pre-activation "
        "WideResNet (BN-ReLU-conv, stride-2 convolutions, groups at 32/16/8 px, global average "
        f"pooling). Input: {int(test.input_bytes)} bytes "
        f"{'to every device' if topology == 'parallel' else 'to device 0'}; bytes are float32 "
        f"activations{', pooled vectors up and the exit decision down' if topology == 'parallel' else ' of the feature map shipped to the next device'}. "  # noqa: E501
        f"{test.n} test / {val.n} val images; flip TTA: {meta.get('flip_tta')}.",
    ]
    if entry:
        lines.append(
            f"Recipe: {m.get('distillation')}; KD alpha {loss.get('kd_alpha')}, T "
            f"{loss.get('kd_temperature')}, attention transfer "
            f"{loss.get('attention_weight') if cfg.get('teacher') else 'none'}, "
            f"feature transfer {loss.get('feature_weight')}, label smoothing "
            f"{loss.get('label_smoothing')}, cutout {cfg.get('cutout')}, one-cycle SGD lr "
            f"{cfg.get('lr')}, batch {cfg.get('batch_size')}, bf16 {cfg.get('bf16')}; "
            f"{m.get('epochs')} epochs on {m.get('train_images')} images in "
            f"{m.get('train_seconds', 0) / 60:.0f} min on {_machine(entry)} "
            f"({entry.get('created')})."
        )
    return "\n".join(lines)


def _machine(entry: dict) -> str:
    """Where a backbone was trained: the GPU and its host, or the CPU machine."""
    device = entry.get("metrics", {}).get("device", "cpu")
    host = entry.get("machine")
    return host if device == "cpu" else f"one {device} GPU (host: {host})"


@one_line_errors
def main(argv: list[str] | None = None) -> str:
    """Run from command-line ``argv`` (default: ``sys.argv``); returns the Markdown tables."""
    args = parse_args(Args, argv)
    from distree_env.io import require_output_file
    from distree_env.manifest import read_manifest
    from distree_env.traces import resolve_trace

    if args.trace is not None:
        return _own_trace(args)
    out = "docs/backbone.md" if args.out is None else args.out
    sections = []
    try:
        if out:
            require_output_file(out, "--out")
        files = read_manifest()["files"]
        for topology, (prefix, backbone) in TOPOLOGY_FILES.items():
            if f"traces/{prefix}-test.npz" not in files:
                continue
            val, test = resolve_trace(f"{prefix}-val"), resolve_trace(f"{prefix}-test")
            sections.append(topology_table(topology, val, test, files.get(backbone)))
    except ValueError as e:
        fail(str(e))
    if not sections:
        fail("no shipped CIFAR-10 traces are listed in checkpoints/MANIFEST.json")
    table = "\n\n".join(
        [*sections, "Generated by `python -m experiments.report_backbone` from the shipped traces."]
    )
    print(table)
    if out:
        from distree_env.io import atomic_write_text

        atomic_write_text(Path(out), "# Backbones\n\n" + table + "\n")
    if args.update_readme:
        from experiments.readme import update_block

        update_block("backbone", table)
    return table


def _own_trace(args: Args) -> str:
    """The table of ``--trace`` and its val counterpart, printed (and written to ``--out``)."""
    from agents.splits import val_counterpart
    from distree_env.io import atomic_write_text, require_output_file
    from distree_env.traces import resolve_trace

    val_name = val_counterpart(args.trace)
    if val_name is None:
        fail(f"--trace {args.trace!r}: name it NAME-test.npz, with NAME-val.npz beside it")
    try:
        if args.out:
            require_output_file(args.out, "--out")
        test = resolve_trace(args.trace)
        val = resolve_trace(val_name)
    except ValueError as e:
        fail(str(e))
    source = test.metadata.get("feature_diff_from", "embeddings")
    table = "\n".join(
        [f"### {args.trace} ({test.topology}, {test.num_devices} devices)", "",
         *exit_rows(val, test), "",
         f"{test.n} test / {val.n} val samples; feature_diff from the exits' {source}."]
    )  # fmt: skip
    print(table)
    if args.out:
        atomic_write_text(Path(args.out), table + "\n")
    return table


if __name__ == "__main__":
    main()
