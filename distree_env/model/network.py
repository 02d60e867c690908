"""The multi-branch early-exit network of DistrEE, and the pipeline layout of MDI-Exit.

Every branch is a pre-activation WideResNet (Zagoruyko & Komodakis, 2016): a 3x3 stem with 16
channels, then three groups of ``(depth - 4) / 6`` basic blocks (BN-ReLU-conv3x3, twice, with an
identity or 1x1 shortcut) at 32, 16 and 8 pixels and widths 16k, 32k, 64k, the downsampling done by
stride-2 convolutions, a final BN-ReLU and global average pooling. The blocks are cut into stages;
an exit follows each stage (``exits`` lists after which block, counted from 1).

``parallel`` (DistrEE, after NoNN): ``num_devices`` branches, each a WRN that sees the whole input
and runs on its own device. After stage k every branch pools its feature map into a vector and sends
it to the aggregator, where exit head k fuses the vectors into a prediction.

``pipeline`` (MDI-Exit): one WRN cut into ``num_exits`` segments on as many devices in sequence;
exit head k runs on device k, and continuing ships the feature map to device k+1.

The runtime API (``stage_forward``, ``pool``, ``exit_forward``) runs one piece at a time on the
device that owns it; ``forward`` is exactly their composition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F

from distree_env.constants import TOPOLOGIES

STEM_WIDTH = 16
GROUP_WIDTHS = (16, 32, 64)  # WRN group widths before the widening factor
MAX_DEPTH = 100  # WRN-100: caps the model built from a file's declared shape
MAX_WIDEN = 32
MAX_DEVICES = 16
MAX_EMBED = 4096
MAX_CLASSES = 1000
MAX_PARAMETERS = 50_000_000  # 200 MB of float32: far above any preset, far below a bad file's ask


@dataclass(frozen=True)
class NetConfig:
    """Architecture of the network; stored beside the weights so a checkpoint names its shape."""

    topology: str = "parallel"
    num_devices: int = 2  # parallel: branches; pipeline: must equal the number of exits
    depth: int = 16  # WRN depth: 6n + 4 for n blocks per group
    widen: int = 2  # WRN widening factor k: group widths 16k, 32k, 64k
    exits: tuple[int, ...] = (2, 4, 5, 6)  # an exit after each of these blocks (1-based)
    embed_dim: int = 128  # width of each exit head's fused embedding
    num_classes: int = 10

    def __post_init__(self) -> None:
        for name in ("num_devices", "depth", "widen", "embed_dim", "num_classes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name}={v!r} is not allowed; it must be an integer")
        if self.topology not in TOPOLOGIES:
            raise ValueError(
                f"topology={self.topology!r} is not allowed; choose one of {TOPOLOGIES}"
            )
        if (self.depth - 4) % 6 or not 10 <= self.depth <= MAX_DEPTH:
            raise ValueError(
                f"depth={self.depth} is not allowed; a WRN depth is 6n + 4 in [10, {MAX_DEPTH}]"
            )
        for name, top in (
            ("widen", MAX_WIDEN),
            ("num_devices", MAX_DEVICES),
            ("embed_dim", MAX_EMBED),
            ("num_classes", MAX_CLASSES),
        ):
            if not 1 <= getattr(self, name) <= top:
                raise ValueError(
                    f"{name}={getattr(self, name)} is not allowed; it must be in [1, {top}]"
                )
        if not isinstance(self.exits, (tuple, list)) or not all(
            isinstance(e, int) and not isinstance(e, bool) for e in self.exits
        ):
            raise ValueError(f"exits={self.exits!r} is not allowed; give a list of block numbers")
        object.__setattr__(self, "exits", tuple(self.exits))
        total = self.num_blocks
        if (
            not self.exits
            or list(self.exits) != sorted(set(self.exits))
            or self.exits[0] < 1
            or self.exits[-1] != total
        ):
            raise ValueError(
                f"exits={self.exits} is not allowed; give increasing block numbers in [1, {total}] "
                f"ending with the last block ({total})"
            )
        if self.num_parameters > MAX_PARAMETERS:
            raise ValueError(
                f"depth={self.depth}, widen={self.widen}, num_devices={self.num_devices} ask for "
                f"{self.num_parameters:,} parameters; at most {MAX_PARAMETERS:,} are allowed"
            )
        if self.topology == "pipeline" and self.num_devices != self.num_exits:
            raise ValueError(
                f"num_devices={self.num_devices} is not allowed for topology='pipeline'; "
                f"it must equal the number of exits ({self.num_exits})"
            )

    @property
    def blocks_per_group(self) -> int:
        """WRN blocks per width group: ``(depth - 4) / 6``, as in WRN-d-k."""
        return (self.depth - 4) // 6

    @property
    def num_blocks(self) -> int:
        """WRN blocks of one branch, over the three width groups."""
        return 3 * self.blocks_per_group

    @property
    def num_exits(self) -> int:
        """Exits of the network, ``K``: one after each entry of ``exits`` (a block count)."""
        return len(self.exits)

    @property
    def num_stages(self) -> int:
        """Stages of a branch: one per exit (stage k ends where exit k reads)."""
        return self.num_exits

    @property
    def num_branches(self) -> int:
        """Parallel WRNs in the network: one per device (``parallel``), else 1."""
        return self.num_devices if self.topology == "parallel" else 1

    @property
    def name(self) -> str:
        """``WRN-16-2`` and the like, as the literature names it."""
        return f"WRN-{self.depth}-{self.widen}"

    def block_width(self, block: int) -> int:
        """Output width of block ``block`` (0-based)."""
        return GROUP_WIDTHS[block // self.blocks_per_group] * self.widen

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Channels of each stage's output feature map (one branch)."""
        return tuple(self.block_width(e - 1) for e in self.exits)

    @property
    def num_parameters(self) -> int:
        """Weights of convolutions and linear layers, counted before anything is allocated."""
        convs, cin = 3 * STEM_WIDTH * 9, STEM_WIDTH
        for b in range(self.num_blocks):
            cout = self.block_width(b)
            convs += cin * cout * 9 + cout * cout * 9 + (cin * cout if cin != cout else 0)
            cin = cout
        heads = sum(
            (w * self.num_branches + 1) * self.embed_dim + (self.embed_dim + 1) * self.num_classes
            for w in self.stage_widths
        )
        return convs * self.num_branches + heads

    def to_dict(self) -> dict:
        """JSON-friendly fields, stored beside the weights in a checkpoint."""
        d = asdict(self)
        d["exits"] = list(self.exits)
        return d

    @classmethod
    def from_dict(cls, d: object) -> NetConfig:
        """The config stored in a checkpoint; unknown or bad fields are a ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"config={type(d).__name__} is not allowed; it must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            raise ValueError(f"unknown NetConfig field(s) {unknown}; allowed: {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as e:  # a wrongly typed value that slipped past the checks
            raise ValueError(f"NetConfig {d!r} is not valid: {e}") from None


class PreActBlock(nn.Module):
    """WRN basic block, pre-activation: BN-ReLU-conv3x3 twice, identity or 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = (
            None
            if cin == cout and stride == 1
            else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output feature map."""
        o = F.relu(self.bn1(x))
        # when the shape changes, the shortcut reads the activated input, as in the WRN reference
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(F.relu(self.bn2(o)))
        return o + skip


class Stage(nn.Sequential):
    """Consecutive WRN blocks; the last stage ends with the network's final BN-ReLU."""


class Branch(nn.Module):
    """One device's WRN: ``stem`` (part of stage 0) and ``stages``, one per exit."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, STEM_WIDTH, 3, padding=1, bias=False)
        n = config.blocks_per_group
        blocks = []
        cin = STEM_WIDTH
        for b in range(config.num_blocks):
            cout = config.block_width(b)
            stride = 2 if b % n == 0 and b > 0 else 1
            blocks.append(PreActBlock(cin, cout, stride))
            cin = cout
        starts = (0, *config.exits[:-1])
        stages = [list(blocks[s:e]) for s, e in zip(starts, config.exits, strict=True)]
        stages[-1] += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        self.stages = nn.ModuleList(Stage(*s) for s in stages)


class ExitHead(nn.Module):
    """Fuse the pooled features of every branch into an embedding, then classify it.

    Pooling comes first so that a device sends a vector, not a feature map; the per-channel
    batch-norm after pooling is the exit's own normalisation (in eval mode an affine map, which
    commutes with average pooling). The embedding (after ReLU) is what the feature-difference
    criterion compares between consecutive exits.
    """

    def __init__(self, in_features: int, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features)
        self.fuse = nn.Linear(in_features, embed_dim)
        self.classify = nn.Linear(embed_dim, num_classes)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits ``[B, C]``, embedding ``[B, embed_dim]``) of the concatenated pooled vectors."""
        embedding = F.relu(self.fuse(F.relu(self.norm(pooled))))
        return self.classify(embedding), embedding


class MultiBranchNet(nn.Module):
    """For every exit k: the logits ``[B, C]`` and the fused embedding ``[B, embed_dim]``."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.branches = nn.ModuleList(Branch(config) for _ in range(config.num_branches))
        self.exits = nn.ModuleList(
            ExitHead(w * config.num_branches, config.embed_dim, config.num_classes)
            for w in config.stage_widths
        )
        for m in self.modules():  # He initialisation, as in the WRN reference
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stage_forward(self, branch: int, k: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``k`` of branch ``branch`` (stage 0 includes the stem; pipeline: branch 0).

        :param branch: which branch (device, for ``parallel``); 0 for ``pipeline``.
        :param k: stage index; stage 0 takes the image, stage k > 0 the output of stage k - 1.
        :param x: the input image batch ``[B, 3, 32, 32]`` or the previous stage's feature map.
        """
        net = self.branches[branch]
        if k == 0:
            x = net.stem(x)
        return net.stages[k](x)

    @staticmethod
    def pool(fmap: torch.Tensor) -> torch.Tensor:
        """Global average pooling ``[B, C, H, W] -> [B, C]``: what a device sends to an exit head.

        :param fmap: a stage's feature map.
        """
        return fmap.mean(dim=(2, 3))

    def exit_forward(self, k: int, pooled: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Exit head ``k`` on one pooled vector per branch: ``(logits, embedding)``.

        :param k: exit index.
        :param pooled: ``pool`` of stage k of every branch, in branch order (pipeline: one).
        """
        if len(pooled) != self.config.num_branches:
            raise ValueError(
                f"pooled has {len(pooled)} vectors; exit {k} needs one per branch "
                f"({self.config.num_branches})"
            )
        return self.exits[k](torch.cat(pooled, dim=1))

    def forward_features(
        self, x: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[list[torch.Tensor]]]:
        """Logits and embeddings per exit, and every stage's feature map ``[branch][k]``."""
        fmaps: list[list[torch.Tensor]] = []
        for b in range(self.config.num_branches):
            h, maps = x, []
            for k in range(self.config.num_exits):
                h = self.stage_forward(b, k, h)
                maps.append(h)
            fmaps.append(maps)
        logits, embeddings = [], []
        for k in range(self.config.num_exits):
            out, emb = self.exit_forward(k, [self.pool(maps[k]) for maps in fmaps])
            logits.append(out)
            embeddings.append(emb)
        return logits, embeddings, fmaps

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-exit logits and embeddings of a batch of images (all exits, no early exit)."""
        logits, embeddings, _ = self.forward_features(x)
        return logits, embeddings
