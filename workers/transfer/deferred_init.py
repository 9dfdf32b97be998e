"""Building a source model without the random initialisation its weights overwrite.

A library builds a model by allocating every parameter and initialising it (normal,
truncated normal, orthogonal...); the loaded weights then overwrite all of it. For
the largest models that initialisation is most of the load time (seconds on a few
CPU cores). `build_from_weights(build)` runs `build` (construct the model, load its
weights; the library's own `pretrained` path is one) with its parameters on the meta
device, so each initialisation is a no-op on a tensor without storage:

- a parameter is registered on the meta device (the global parameter-registration
  hook; only in the building thread, so other threads' modules are untouched);
- buffers stay real: non-persistent ones (position indices, relative-position
  tables, anchors) are computed in the constructor as usual and never loaded;
- when `load_state_dict` reaches a module (its load pre-hook), each meta parameter
  that the weights hold gets storage of its own, in its own dtype and shape, and
  `load_state_dict` copies into it as it always does: the same dtype conversion and
  the same private storage as an initialised model, so the result is bit-identical.
  (`load_state_dict(assign=True)` would instead keep the file's tensors: their
  dtype, and storage shared between entries or with a memory-mapped file.) The
  parameter object is swapped in place (`torch.utils.swap_tensors`), so tied
  parameters and other references to it stay valid.

A parameter that no weights fill (a classifier the caller does not drop, an entry a
checkpoint lacks) or a buffer computed from a parameter stays on the meta device;
the model is then built again the ordinary way, with initialisation, as is a model
whose constructor needs parameter values. Correctness never depends on a model
family being known here; only the speed does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook
from torch.utils.hooks import RemovableHandle

from workers.transfer.errors import SourceModelError

log = logging.getLogger(__name__)

Model = TypeVar("Model", bound=nn.Module)

# .hooks while a thread builds: {id(module): (module, its load pre-hook)}; the module is
# held so that its id is not reused by another one during the build.
_building = threading.local()


def build_from_weights(build: Callable[[], Model], *, initialise: bool = False) -> Model:
    """`build()` (construct a model and load all its parameters) without initialising
    the parameters first; the ordinary build when `initialise` or when the weights
    leave anything unfilled (module docstring)."""
    if initialise:
        return build()
    if getattr(_building, "hooks", None) is not None:
        raise RuntimeError("build_from_weights is not reentrant")
    try:
        model = _build_on_meta(build)
    except SourceModelError:
        raise  # the weights do not fit: building with initialisation would say the same
    except Exception as exc:  # a constructor or loader that needs parameter values
        log.info("built with initialisation: %s", exc)
        return build()
    unfilled = [
        name
        for name, tensor in (*model.named_parameters(), *model.named_buffers())
        if tensor.is_meta
    ]
    if unfilled:
        log.info("built with initialisation: %s not filled by the weights", ", ".join(unfilled[:5]))
        return build()
    return model


def _build_on_meta(build: Callable[[], Model]) -> Model:
    hooks: dict[int, tuple[nn.Module, RemovableHandle]] = {}
    _building.hooks = hooks
    try:
        return build()
    finally:
        _building.hooks = None
        for _, handle in hooks.values():
            handle.remove()


def _on_meta(module: nn.Module, name: str, param: nn.Parameter) -> nn.Parameter | None:
    """The parameter-registration hook: while this thread builds, a meta copy instead."""
    hooks = getattr(_building, "hooks", None)
    if hooks is None:
        return None
    if param.is_meta:
        # A meta parameter moved to another module (a layer rebuilt from another):
        # that module fills it when it loads.
        _hook(hooks, module)
        return None
    # A Parameter subclass (lazy, or another library's) or one placed on a device of
    # its own keeps the ordinary path.
    if type(param) is not nn.Parameter or param.device != torch.get_default_device():
        return None
    _hook(hooks, module)
    return nn.Parameter(torch.empty_like(param, device="meta"), param.requires_grad)


def _hook(hooks: dict[int, tuple[nn.Module, RemovableHandle]], module: nn.Module) -> None:
    if id(module) not in hooks:
        hooks[id(module)] = (module, module.register_load_state_dict_pre_hook(_materialise))


def _materialise(module: nn.Module, state_dict, prefix: str, *_) -> None:
    """The load pre-hook: storage for each meta parameter of `module` that the weights
    hold (a real tensor of its shape), for load_state_dict to copy into."""
    for name, param in module.named_parameters(recurse=False):
        given = state_dict.get(prefix + name)
        if not (
            param.is_meta
            and isinstance(given, torch.Tensor)
            and not given.is_meta
            and given.shape == param.shape
        ):
            continue
        real = torch.empty_like(param, device=torch.get_default_device())
        try:
            torch.utils.swap_tensors(param, nn.Parameter(real, param.requires_grad))
        except RuntimeError as exc:  # still meta: build_from_weights builds again
            log.debug("cannot swap %s%s: %s", prefix, name, exc)


# Registered once, at import: hooks added and removed while other threads build
# modules would change the dict that those threads iterate over.
register_module_parameter_registration_hook(_on_meta)
