"""The transferred model: input adapter, source backbone in stages, new head.

A backbone is a sequence of stages (stem, blocks, ...) followed by `post`
(pooling and whatever sits between the last block and the old classifier).
`unfreeze_blocks = k` trains the last k stages (and `post`); the frozen ones
keep their batch-norm statistics (they stay in eval mode even in `train()`),
so their output does not depend on the trial and can be cached.

A backbone that is not a chain of stages (a ViT) is one stage whose
parameters come in blocks (`blocks`, names bottom first): `unfreeze_blocks = k`
trains the parameters of its top k blocks, and its modules whose parameters are
all frozen stay in eval mode. Only the head-only model (k = 0) has a frozen
trunk whose output can be cached; with k >= 1 the whole stage runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from workers.transfer.data import InputSpec
from workers.transfer.errors import ParamError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}
"""The head's activations: the spec's choices for `activation` (KNOWN_PARAMS), no more."""


class InputAdapter(nn.Module):
    """Pixels in [0, 1] -> the source model's channels, size and normalisation."""

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.channels = spec.channels
        self.size = spec.size
        self.mode = (
            spec.interpolation if spec.interpolation in ("bilinear", "bicubic") else "bilinear"
        )
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ParamError(
                    f"images have {x.shape[1]} channels and the model takes {self.channels}"
                )
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode=self.mode, align_corners=False)
        return (x - self.mean) / self.std


def build_head(
    in_features: int,
    num_classes: int,
    *,
    depth: int,
    width: int,
    dropout: float,
    activation: str,
) -> nn.Sequential:
    """`depth` linear layers (dropout before each), the activation between them."""
    if activation not in ACTIVATIONS:
        raise ParamError(
            f"activation {activation!r} is unknown; choose one of {', '.join(ACTIVATIONS)}"
        )
    if depth < 1 or width < 1 or not 0.0 <= dropout < 1.0:
        raise ParamError(
            f"head_depth={depth}, head_width={width}, dropout={dropout}: need head_depth >= 1, "
            "head_width >= 1 and 0 <= dropout < 1"
        )
    layers: list[nn.Module] = []
    features = in_features
    for _ in range(depth - 1):
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(features, width), ACTIVATIONS[activation]()]
        features = width
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


class TransferModel(nn.Module):
    """adapter -> stages -> post -> head; the first `cut` trunk modules are frozen,
    and with `blocks` the lower blocks of the one stage."""

    def __init__(
        self,
        adapter: InputAdapter,
        stages: list[nn.Module],
        post: nn.Module,
        head: nn.Module,
        *,
        unfreeze_blocks: int,
        blocks: Sequence[Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        if blocks is not None and len(stages) != 1:
            raise ValueError(f"blocks divide one stage; got {len(stages)} stages")
        self.adapter = adapter
        self.stages = nn.ModuleList(stages)
        self.post = post
        self.head = head
        self.num_blocks = len(blocks) if blocks is not None else len(stages)
        k = max(0, min(int(unfreeze_blocks), self.num_blocks))
        self.unfrozen_stages = k  # blocks trained, whichever kind they are
        self._frozen_parts: list[nn.Module] = []
        if k == 0:
            self.cut = len(stages) + 1  # the trunk is stages + [post], all frozen
        elif blocks is None:
            self.cut = len(stages) - k  # post trains with the last stage
        else:
            self.cut = 0
            self._freeze_blocks(stages[0], blocks[: len(blocks) - k])
        for module in self.frozen_modules():
            module.requires_grad_(False)
        self.train()

    def _freeze_blocks(self, stage: nn.Module, frozen: Sequence[Sequence[str]]) -> None:
        names = {name for block in frozen for name in block}
        for name, param in stage.named_parameters():
            if name in names:
                param.requires_grad_(False)
        # Modules with frozen parameters only, e.g. a frozen block and its norms and dropouts.
        self._frozen_parts = [
            module
            for module in stage.modules()
            if (params := list(module.parameters())) and not any(p.requires_grad for p in params)
        ]

    def trunk(self) -> list[nn.Module]:
        return [*self.stages, self.post]

    def frozen_modules(self) -> list[nn.Module]:
        return [self.adapter, *self.trunk()[: self.cut], *self._frozen_parts]

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()  # frozen batch norm keeps its running statistics
        return self

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the frozen part, which does not change during training."""
        x = self.adapter(x)
        for module in self.trunk()[: self.cut]:
            x = module(x)
        return x

    def forward_from_frozen(self, h: torch.Tensor) -> torch.Tensor:
        for module in self.trunk()[self.cut :]:
            h = module(h)
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from_frozen(self.frozen_features(x))

    def backbone_trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Unfrozen backbone parameters: the ones L2-SP pulls towards their start."""
        for name, param in self.named_parameters():
            if param.requires_grad and not name.startswith("head."):
                yield name, param
