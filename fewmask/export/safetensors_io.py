"""The ``safetensors`` format: the masked weights as a plain state dict, the masks beside them.

Tensors: every entry of the backbone's state dict under its own name, masked weights as
``W * mask`` (loads into the backbone class without any masker::

    state = safetensors.torch.load_file(path)
    backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith("mask/")})

), and each mask as a bool tensor ``mask/<parameter name>``. Metadata (strings): ``format``,
``fewmask_version``, ``torch_version``, ``config`` (JSON, seed included), ``input_shape``,
``ways``, ``iteration``, ``digest`` (the SHA-256 of the masked weights, checked on loading).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from fewmask.errors import ExportError
from fewmask.export.subnetwork import Subnetwork
from fewmask.factory import resolve
from fewmask.registry import Registry
from fewmask.version import __version__

FORMAT = "fewmask.safetensors"
MASK_PREFIX = "mask/"
INSTALL = 'pip install "fewmask[export]"'


def require(module: str) -> Any:
    """Import an optional library of the ``export`` extra, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise ExportError(
            f"this needs the optional library {top!r}, which is not installed: {INSTALL}"
        ) from None


def to_bytes(sub: Subnetwork) -> bytes:
    """The safetensors file of ``sub``."""
    save = require("safetensors.torch").save
    tensors = dict(sub.masked_state())
    for name, mask in sub.masks.items():
        tensors[MASK_PREFIX + name] = (mask != 0).contiguous()
    metadata = {
        "format": FORMAT,
        "fewmask_version": __version__,
        "torch_version": torch.__version__,
        "config": json.dumps(sub.config, sort_keys=True),
        "input_shape": json.dumps(list(sub.input_shape)),
        "ways": str(sub.ways),
        "iteration": str(sub.iteration),
        "digest": sub.digest(),
    }
    return save(tensors, metadata=metadata)


def is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def load_safetensors(path: Path, *, registry: Registry) -> Subnetwork:
    """The network of a safetensors export, rebuilt from its config and verified."""
    return from_bytes(Path(path).read_bytes(), path, registry=registry)


def from_bytes(data: bytes, path: Path | str, *, registry: Registry) -> Subnetwork:
    """The network of a safetensors export's bytes (``path`` names it in errors)."""
    load = require("safetensors.torch").load
    try:
        tensors = load(data)
        metadata = _metadata(data)
        if metadata.get("format") != FORMAT:
            raise ValueError(f"no fewmask metadata (format {metadata.get('format')!r})")
        config = json.loads(metadata["config"])
        shape = tuple(json.loads(metadata["input_shape"]))
        ways, iteration = int(metadata["ways"]), int(metadata["iteration"])
    except (ValueError, KeyError, OSError) as exc:
        raise ExportError(f"{path}: not a readable fewmask safetensors export ({exc})") from None
    except Exception as exc:  # safetensors' own SafetensorError on a truncated file
        raise ExportError(f"{path}: corrupt or truncated safetensors file ({exc})") from None
    resolved = resolve(config, registry=registry)
    parts = resolved.components
    inner, objective = parts["inner"].build(), parts["objective"].build()
    backbone = parts["backbone"].build(input_shape=shape, num_classes=ways)
    dtype = getattr(torch, resolved.experiment.train.dtype)
    backbone.to(torch.device("cpu"), dtype)
    masks = {
        k[len(MASK_PREFIX) :]: v.to(dtype) for k, v in tensors.items() if k.startswith(MASK_PREFIX)
    }
    weights = {k: v for k, v in tensors.items() if not k.startswith(MASK_PREFIX)}
    try:
        backbone.load_state_dict(weights)
    except RuntimeError as exc:
        raise ExportError(
            f"{path}: its weights do not fit the backbone of its config ({exc})"
        ) from None
    inner.attach(backbone)
    sub = Subnetwork(
        backbone,
        masks,
        inner,
        objective,
        config,
        shape,
        ways,
        iteration,
        str(path),  # type: ignore[arg-type]
    )
    if sub.digest() != metadata.get("digest"):
        raise ExportError(
            f"{path}: its weights or masks were altered: their SHA-256 is not the one recorded "
            f"when the file was written (fewmask {metadata.get('fewmask_version')}, torch "
            f"{metadata.get('torch_version')})"
        )
    return sub


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]).get("__metadata__") or {}
