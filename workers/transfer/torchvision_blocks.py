"""How `unfreeze_blocks` divides a torchvision classifier: its blocks, bottom first.

torchvision models have no `group_matcher` (timm's coarse groups, backbones.timm_blocks),
so the blocks come from each family's own module names. One rule groups a family's
body (the children its forward runs in order): a child holding parameters starts a
block, unless it is a normalisation layer; children without parameters (ReLU,
pooling) and norms join the block before them. Per family:

- ResNet, ResNeXt, Wide ResNet: the stem (`conv1`..`maxpool`), `layer1..4`;
- RegNet: `stem`, `trunk_output.block1..4`;
- MobileNet, EfficientNet, ConvNeXt, Swin: each child of `features` (ConvNeXt's
  and Swin's downsampling layers are blocks of their own);
- VGG, AlexNet, SqueezeNet: each conv layer or Fire module of `features`, with
  the ReLU and pooling after it;
- DenseNet: the stem (`conv0`..`pool0`), each `denseblockN` with its
  `transitionN` (`norm5` with the top one);
- ShuffleNet V2: `conv1` (with `maxpool`), `stage2..4`, `conv5`;
- MNASNet: the stem (`layers.0..7`), each stage `layers.8..13`, the final conv;
- Inception v3, GoogLeNet: the stem (the convs before the first mixed block),
  each `Mixed_*` / `inception*` block;
- MaxViT: `stem`, each of its 4 `blocks`;
- ViT: `conv_proj` + `class_token` + `encoder.pos_embedding`, then each
  `encoder.layers.encoder_layer_N`.

Every family but ViT runs as the chain of its blocks (checked against the model's
own forward by sources.py), so the frozen prefix is cached; ViT's forward adds the
class token and position embedding between modules, so it runs whole, frozen
parameter by parameter (models.TransferModel `blocks`).

Whatever lies between the top block and the classifier (ViT's `encoder.ln`, Swin's
`norm`, the hidden layers of AlexNet's, VGG's, MobileNetV3's and MaxViT's
classifiers) trains with the top block, as on the timm side. A class not listed (a
family newer than this list) gets the rule over its top-level children, run whole.

Inception v3's and GoogLeNet's auxiliary classifiers are training-time heads of the
old task, not part of the backbone: they are dropped (`aux_logits=False`, as
torchvision's builders do when they load weights) and their weights ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from workers.transfer.errors import SourceModelError

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


@dataclass
class Layout:
    """Blocks as module (or parameter) names, bottom first; `post` when the forward is
    the chain of the blocks followed by `post`, else None (the model runs whole)."""

    blocks: list[list[str]]
    post: list[nn.Module] | None


def headless(model: nn.Module, uri: str) -> tuple[tuple[str, ...], int]:
    """Drop the auxiliary classifiers and replace the classifier, in place, so the model
    gives its features; the state-dict prefixes no longer used, and the feature width."""
    dropped = []
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name, _ in list(model.named_children()):
            if name.lower().startswith("aux"):
                setattr(model, name, None)
                dropped.append(name)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        name, classifier = linears[-1]
        _replace(model, name, nn.Identity())
        width = classifier.in_features
    elif isinstance(getattr(model, "classifier", None), nn.Sequential) and any(
        isinstance(m, nn.Conv2d) for m in model.classifier
    ):
        # SqueezeNet: a 1x1 convolution to the classes, then ReLU and pooling.
        name = "classifier"
        width = next(m for m in model.classifier if isinstance(m, nn.Conv2d)).in_channels
        model.classifier = nn.AdaptiveAvgPool2d(1)
    else:
        raise SourceModelError(f"{uri}: the model has no classifier to replace")
    return tuple(f"{n}." for n in (name, *dropped)), width


def layout(model: nn.Module) -> Layout:
    """The blocks of a headless torchvision classifier (module docstring)."""
    import torchvision.models as tv

    def flat() -> list[nn.Module]:
        return [nn.Flatten(1)]

    def pool() -> list[nn.Module]:
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]

    def children(prefix: str = "") -> list[str]:
        parent = model.get_submodule(prefix) if prefix else model
        return [f"{prefix}.{n}" if prefix else n for n, _ in parent.named_children()]

    if isinstance(model, tv.VisionTransformer):
        stem = ["conv_proj", "class_token", "encoder.pos_embedding"]
        return Layout([stem, *([n] for n in children("encoder.layers"))], None)
    if isinstance(model, tv.ResNet):
        body = ["conv1", "bn1", "relu", "maxpool", *(f"layer{i}" for i in range(1, 5))]
        return Layout(_group(model, body, stem_until="layer1"), [model.avgpool, *flat()])
    if isinstance(model, tv.RegNet):
        body = ["stem", *children("trunk_output")]
        return Layout(_group(model, body), [model.avgpool, *flat()])
    if isinstance(model, tv.ShuffleNetV2):
        return Layout(_group(model, [n for n in children() if n != "fc"]), pool())
    if isinstance(model, tv.MNASNet):
        first = next(
            n for n in children("layers") if isinstance(model.get_submodule(n), nn.Sequential)
        )
        rest = list(model.classifier)[:-1]
        return Layout(_group(model, children("layers"), stem_until=first), [*pool(), *rest])
    if isinstance(model, tv.Inception3 | tv.GoogLeNet):
        post = ["avgpool", "dropout", "fc"]
        body = [n for n in children() if n not in post]
        first = next(n for n in body if n.startswith(("Mixed", "inception")))
        tail = [model.avgpool, model.dropout, *flat()]
        if isinstance(model, tv.GoogLeNet):
            tail = [model.avgpool, *flat(), model.dropout]
        return Layout(_group(model, body, stem_until=first), tail)
    if isinstance(model, tv.MaxVit):
        body = ["stem", *children("blocks")]
        return Layout(_group(model, body), list(model.classifier)[:-1])
    if isinstance(model, tv.DenseNet):
        body = children("features")
        groups = _group(model, body, stem_until="features.denseblock1", joins=("transition",))
        return Layout(groups, [nn.ReLU(), *pool()])
    if isinstance(model, tv.SwinTransformer):
        after = [m for n, m in model.named_children() if n not in ("features", "head")]
        return Layout(_group(model, children("features")), after)
    if isinstance(model, tv.SqueezeNet):
        return Layout(_group(model, children("features")), pool())
    if isinstance(getattr(model, "features", None), nn.Sequential) and isinstance(
        getattr(model, "classifier", None), nn.Sequential
    ):
        # MobileNet, EfficientNet, ConvNeXt, VGG, AlexNet
        rest = list(model.classifier)[:-1]
        avgpool = getattr(model, "avgpool", None) or nn.AdaptiveAvgPool2d(1)
        flatten = [] if any(isinstance(m, nn.Flatten) for m in rest) else flat()
        return Layout(_group(model, children("features")), [avgpool, *flatten, *rest])
    return Layout(_group(model, children()), None)


def _group(
    model: nn.Module,
    body: list[str],
    *,
    stem_until: str | None = None,
    joins: tuple[str, ...] = (),
) -> list[list[str]]:
    """The body's children in blocks: one starts at each child holding parameters, but
    norms, children without parameters and those named `joins*` join the block before;
    with `stem_until`, every child before that one is one block, the stem."""
    blocks: list[list[str]] = []
    pending: list[str] = []  # parameterless children before the first block
    start = body.index(stem_until) if stem_until is not None else 0
    if start:
        blocks.append(body[:start])
    for name in body[start:]:
        module = model.get_submodule(name)
        starts = (
            any(True for _ in module.parameters())
            and not isinstance(module, _NORMS)
            and not (joins and name.rpartition(".")[2].startswith(joins))
        )
        if starts:
            blocks.append([*pending, name])
            pending = []
        elif blocks:
            blocks[-1].append(name)
        else:
            pending.append(name)
    if pending:  # no child holds parameters of its own
        blocks.append(pending)
    return blocks


def parameter_blocks(model: nn.Module, blocks: list[list[str]]) -> list[list[str]]:
    """The model's parameter names in each block, bottom first; a parameter that no block
    names (a final norm, a classifier's hidden layers) joins the top block."""
    groups: list[list[str]] = [[] for _ in blocks]
    for param, _ in model.named_parameters():
        owner = next(
            (
                i
                for i, block in enumerate(blocks)
                if any(param == n or param.startswith(n + ".") for n in block)
            ),
            len(blocks) - 1,
        )
        groups[owner].append(param)
    return [group for group in groups if group]


def chain(model: nn.Module, found: Layout) -> tuple[list[nn.Module], nn.Module] | None:
    """The blocks as stages (the model's own modules) and post, when the layout is a
    chain; to be checked against the model's forward before it is used."""
    if found.post is None:
        return None
    stages: list[nn.Module] = [
        nn.Sequential(*(model.get_submodule(name) for name in block)) for block in found.blocks
    ]
    return stages, nn.Sequential(*found.post)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
