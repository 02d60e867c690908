"""Draw the start of a DistrEE request stream as an animated GIF (and its first frame as a PNG).

    python -m experiments.render_episode [--env-id DistrEE-v3] [--steps 40] [--out docs/episode.gif]

The frames are what ``render_mode="rgb_array"`` returns (``distree_env.render``); the policy is
a round-number confidence rule (exit when the top-1 probability reaches ``--threshold``), so the
picture shows requests leaving at different exits. The README shows the files this writes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from experiments.cli import (
    MAX_SEED,
    one_line_errors,
    parse_args,
    require_int,
)

#: Most frames a GIF may hold (a typo must not write a huge file).
MAX_STEPS = 1000


@dataclass(frozen=True)
class Args:
    """Record the first steps of an episode as a GIF and a PNG of its first frame."""

    env_id: str = field(default="DistrEE-v3", metadata={"help": "registered DistrEE id"})
    steps: int = field(default=40, metadata={"help": f"frames (1 to {MAX_STEPS})"})
    threshold: float = field(default=0.8, metadata={"help": "exit when max_prob >= this (0 to 1)"})
    seed: int = field(default=0, metadata={"help": f"random seed (0 to {MAX_SEED})"})
    out: str = field(default="docs/episode.gif", metadata={"help": "GIF path (PNG beside it)"})

    def __post_init__(self) -> None:
        from distree_env.io import require_output_file

        require_int("steps", self.steps, 1, MAX_STEPS)
        require_int("seed", self.seed, 0, MAX_SEED)
        if not 0 <= self.threshold <= 1:
            raise ValueError(
                f"--threshold={self.threshold} is not allowed: a probability in [0, 1]"
            )
        if not self.out.endswith(".gif"):
            raise ValueError(f"--out={self.out!r} is not allowed: a path ending in .gif")
        # both outputs checked before the env is built: the GIF must not be written and then
        # the PNG beside it fail
        require_output_file(self.out, "--out")
        require_output_file(Path(self.out).with_suffix(".png"), "the PNG beside --out")


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    """Run from command-line ``argv`` (default: ``sys.argv``); returns the exit status."""
    args = parse_args(Args, argv)
    import gymnasium as gym
    from PIL import Image

    import distree_env  # noqa: F401  (registers the ids)
    from agents import ConfidenceThreshold
    from distree_env.io import atomic_write_bytes

    gif, png = Path(args.out), Path(args.out).with_suffix(".png")
    if args.env_id not in distree_env.ENV_IDS:
        raise ValueError(
            f"--env-id={args.env_id!r} is not allowed: one of {sorted(distree_env.ENV_IDS)}"
        )
    env = gym.make(args.env_id, render_mode="rgb_array")
    policy = ConfidenceThreshold(args.threshold).bind(env.unwrapped)
    obs, _ = env.reset(seed=args.seed)
    frames = [env.render()]
    for _ in range(args.steps - 1):
        action, _ = policy.predict(obs)
        obs, _, terminated, truncated, _ = env.step(int(action))
        frames.append(env.render())
        if terminated or truncated:  # v2, v3: every request is an episode; the stream goes on
            obs, _ = env.reset()
    env.close()
    pictures = [Image.fromarray(f) for f in frames]
    fps = env.metadata["render_fps"]
    out = io.BytesIO()
    pictures[0].save(out, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=round(1000 / fps), loop=0, optimize=True)  # fmt: skip
    atomic_write_bytes(gif, out.getvalue())
    out = io.BytesIO()
    pictures[0].save(out, format="PNG", optimize=True)
    atomic_write_bytes(png, out.getvalue())
    print(f"{gif} ({len(frames)} frames, {gif.stat().st_size // 1024} KiB) and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
