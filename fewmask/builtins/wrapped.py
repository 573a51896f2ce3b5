"""Any ``nn.Module`` classifier as a :class:`~fewmask.interfaces.Backbone`: :func:`as_backbone`.

Description:
    Wraps a module whose output is the logits of one ``nn.Linear`` head (the named one, or the
    last ``nn.Linear`` registered). The module is kept as ``backbone.model`` (its parameter
    names gain the prefix ``model.``) and is changed in place to behave like the built-in
    backbones: every BatchNorm (and InstanceNorm) normalises with the current batch's
    statistics and keeps no running statistics; in-place activations become out-of-place;
    ``nn.Hardsigmoid`` becomes an equal function that PyTorch can differentiate twice.

    ``backbone(x)`` is ``module(x)`` (the engine runs it through ``functional_call``);
    ``forward_features`` returns the head's input and ``forward_head`` applies the head, so
    ``forward_head(forward_features(x))`` is the same. Maskable weights are the weights of every
    convolution and ``nn.Linear`` outside the head (never norms or biases, and not the head,
    as in the built-in backbones), unless ``maskable`` names them.

Example::

    backbone = fewmask.as_backbone(MyNet(num_classes=5), input_shape=(3, 32, 32))
    trainer = fewmask.Trainer(backbone, fewmask.create("masker", "metaticket"), ...)
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewmask.errors import ConfigError
from fewmask.interfaces import Backbone

_CAPTURE = threading.local()
"""``active`` is set while this thread runs :meth:`WrappedBackbone.forward_features`."""


def _features_instead_of_logits(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
    """Forward hook on the head: its input replaces its output while features are captured."""
    return args[0] if getattr(_CAPTURE, "active", False) else None


class DoubleBackwardHardSigmoid(nn.Module):
    """``relu6(x + 3) / 6``: the values of ``nn.Hardsigmoid``, differentiable twice."""

    task_separable = True  # element-wise

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(x + 3.0) / 6.0


def prepare_for_meta_learning(model: nn.Module) -> list[str]:
    """Batch statistics in every norm, out-of-place activations, a twice-differentiable
    Hardsigmoid; changes ``model`` in place. Returns the modules that keep other running
    statistics (empty when all is well)."""
    kept = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
            module.num_batches_tracked = None
        elif any(getattr(module, b, None) is not None for b in ("running_mean", "running_var")):
            kept.append(f"{name or 'the module'} ({type(module).__name__})")
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if type(child) is nn.Hardsigmoid:
                setattr(parent, child_name, DoubleBackwardHardSigmoid())
    for module in model.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    return kept


def _is_maskable_module(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))


class WrappedBackbone(Backbone):
    """A user's classifier module (``self.model``) as a backbone; built by :func:`as_backbone`."""

    task_separable = True
    """Its ``forward`` only calls the user's module; the batched engine then checks each of that
    module's layers (a ``Sequential`` of torch layers passes, a custom class must declare it)."""

    def __init__(
        self,
        module: nn.Module,
        *,
        input_shape: Sequence[int],
        head: str | None = None,
        maskable: Iterable[str] | None = None,
    ):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"as_backbone needs an nn.Module, got {type(module).__name__}")
        if isinstance(module, Backbone):
            raise TypeError(f"{type(module).__name__} is already a Backbone; use it as it is")
        self.input_shape = tuple(int(s) for s in input_shape)
        if not self.input_shape or min(self.input_shape) < 1:
            raise ConfigError(
                [f"$.backbone: input_shape must be positive sizes, got {input_shape}"]
            )
        self.head_name = _find_head(module, head)
        kept = prepare_for_meta_learning(module)
        if kept:
            raise ConfigError(
                [
                    "$.backbone: these norm layers keep running statistics that cannot be "
                    f"switched to batch statistics: {', '.join(kept[:3])}"
                ]
            )
        self.model = module
        self._hook = self.get_classifier().register_forward_hook(_features_instead_of_logits)
        self._check_head_gives_the_output()
        self._maskable = self._choose_maskable(maskable)

    @property
    def num_features(self) -> int:  # type: ignore[override]
        return self.get_classifier().in_features

    @property
    def num_classes(self) -> int:
        return self.get_classifier().out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """The head's input ``[batch, num_features]``: the module's forward up to its head."""
        before = getattr(_CAPTURE, "active", False)
        _CAPTURE.active = True
        try:
            return self.model(x)
        finally:
            _CAPTURE.active = before

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.get_classifier()(x)

    def get_classifier(self) -> nn.Linear:
        return self.model.get_submodule(self.head_name)  # type: ignore[return-value]

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        old = self.get_classifier()
        new = nn.Linear(
            old.in_features,
            num_classes,
            bias=old.bias is not None,
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
        parent_name, _, child = self.head_name.rpartition(".")
        setattr(self.model.get_submodule(parent_name), child, new)
        self._hook.remove()
        self._hook = new.register_forward_hook(_features_instead_of_logits)

    def maskable_parameter_names(self) -> list[str]:
        return list(self._maskable)

    def _choose_maskable(self, maskable: Iterable[str] | None) -> list[str]:
        names = {id(p): n for n, p in self.named_parameters()}
        if maskable is not None:
            chosen = [f"model.{n}" for n in maskable]  # names in the module
            unknown = [n for n in chosen if n not in names.values()]
            if unknown:
                raise ConfigError(
                    [
                        f"$.backbone.maskable: {', '.join(n[6:] for n in unknown)} "
                        "is not a parameter of the module; its parameters are "
                        f"{', '.join(n[6:] for n in list(names.values())[:8])}..."
                    ]
                )
            return list(dict.fromkeys(chosen))
        head = {id(p) for p in self.get_classifier().parameters()}
        found = [
            names[id(m.weight)]
            for m in self.model.modules()
            if _is_maskable_module(m)
            and isinstance(m.weight, nn.Parameter)
            and id(m.weight) not in head
        ]
        return list(dict.fromkeys(found))

    def _check_head_gives_the_output(self) -> None:
        """Run the module once on zeros: its output must be the head's output (nothing after
        the head), the head must run once, and its input must be ``[batch, in_features]``."""
        calls: list[tuple[Tensor, Tensor]] = []
        head = self.get_classifier()
        handle = head.register_forward_hook(lambda m, a, o: calls.append((a[0], o)))
        reference = next(iter(self.model.parameters()), None)
        x = torch.zeros(
            2,
            *self.input_shape,
            device=reference.device if reference is not None else None,
            dtype=reference.dtype if reference is not None else None,
        )
        try:
            with torch.no_grad():
                output = self.model(x)
        except Exception as error:
            raise ConfigError(
                [
                    f"$.backbone: the module failed on a batch of input_shape "
                    f"{self.input_shape}: {type(error).__name__}: {error}"
                ]
            ) from error
        finally:
            handle.remove()
        where = f"$.backbone.head: '{self.head_name}'"
        if len(calls) != 1:
            raise ConfigError([f"{where} ran {len(calls)} times in one forward, not once"])
        features, logits = calls[0]
        if output is not logits:
            raise ConfigError(
                [
                    f"{where} does not give the module's output (the module changes its "
                    "logits after the head, or returns something else); name the Linear whose "
                    "output the module returns"
                ]
            )
        if features.dim() != 2:
            raise ConfigError(
                [f"{where} gets input of shape {tuple(features.shape)}, not [batch, features]"]
            )


def _find_head(module: nn.Module, head: str | None) -> str:
    """The name of the head: ``head`` checked, else the last ``nn.Linear`` registered."""
    if head is None:
        linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and n]
        if not linears:
            raise ConfigError(
                [
                    f"$.backbone.head: {type(module).__name__} has no nn.Linear to use as the "
                    "head; as_backbone needs a module whose output is one Linear's"
                ]
            )
        return linears[-1]
    try:
        found = module.get_submodule(head)
    except AttributeError:
        found = None
    if not isinstance(found, nn.Linear) or not head:
        linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and n]
        what = "is not a submodule" if found is None else f"is a {type(found).__name__}"
        raise ConfigError(
            [
                f"$.backbone.head: '{head}' {what}; the head must be an nn.Linear "
                f"(the module's are: {', '.join(linears) or 'none'})"
            ]
        )
    return head


def as_backbone(
    module: nn.Module,
    head: str | None = None,
    *,
    input_shape: Sequence[int],
    maskable: Iterable[str] | None = None,
) -> WrappedBackbone:
    """``module`` as a :class:`~fewmask.interfaces.Backbone` for any masker and objective.

    Args:
        module: a classifier whose output is the logits of one ``nn.Linear``; changed in place
            (batch-statistics norms, out-of-place activations; see :mod:`fewmask.builtins.wrapped`).
        head: the name of that ``nn.Linear`` in ``module`` (e.g. ``"fc"``); default: the last
            ``nn.Linear`` registered. ``reset_classifier(n)`` replaces it with a new one.
        input_shape: the image shape ``(C, H, W)`` the module takes; the module is run once on
            zeros of this shape to check that the head gives its output.
        maskable: the names (in ``module``) of the weights a masker may prune; default: every
            convolution and ``nn.Linear`` weight outside the head.

    Example::

        net = torchvision.models.resnet18(num_classes=5)
        backbone = as_backbone(net, "fc", input_shape=(3, 32, 32))
        backbone.maskable_parameter_names()[:2]   # ['model.conv1.weight', 'model.layer1.0...']
    """
    return WrappedBackbone(module, input_shape=input_shape, head=head, maskable=maskable)
