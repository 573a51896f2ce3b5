"""The ``packed`` format: a seed, one bit per maskable weight, and only what the seed cannot give.

File layout::

    b"FMPACK01"                magic and format version
    uint64 little-endian       length of the header
    header                     UTF-8 JSON: config (seed included), image shape, ways, dtype,
                               fewmask and torch versions, device and generator of the draw,
                               the SHA-256 of the masked weights, where each array lies
    payload                    the masks (numpy.packbits, one bit per entry) and the stored
                               tensors, one after the other

Stored as is: every backbone tensor that differs from the regenerated initial one (a learned
norm or head, a BatchNorm buffer), and, inside masked weights, the kept entries that differ (the
weights IteRand re-drew and the mask keeps: their flat indices and values). Loading draws the
initial network again (:func:`fewmask.export.regenerate.regenerate`), puts these back and
compares the SHA-256 of the masked weights with the stored one; another digest (another torch
version or device draws other numbers) is an :class:`~fewmask.errors.ExportError` naming both
versions, never a silently different network.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fewmask.errors import ExportError
from fewmask.export.regenerate import Initial, regenerate
from fewmask.export.subnetwork import Subnetwork, tensor_bytes, tensor_from_bytes
from fewmask.registry import Registry
from fewmask.version import __version__

MAGIC = b"FMPACK01"
FORMAT = "fewmask.packed"
GENERATOR = "torch.manual_seed(seed): the CPU default generator (mt19937)"


def pack(sub: Subnetwork, initial: Initial) -> bytes:
    """The packed file of ``sub``, whose initial network (regenerated) is ``initial``."""
    if sub.dense:
        raise ExportError(
            f"{sub.source}: a dense run (no masks, e.g. MAML) learned every weight; the packed "
            "format stores a seed and a mask and cannot hold it. Use --format safetensors"
        )
    chunks: list[bytes] = []
    offset = 0

    def put(data: bytes) -> dict[str, int]:
        nonlocal offset
        chunks.append(data)
        where = {"offset": offset, "length": len(data)}
        offset += len(data)
        return where

    masks = []
    for name, mask in sub.masks.items():
        bits = np.packbits(mask.detach().cpu().reshape(-1).numpy() != 0)
        masks.append({"name": name, "shape": list(mask.shape), **put(bits.tobytes())})
    stored = []
    initial_state = initial.backbone.state_dict()
    for name, tensor in sub.backbone.state_dict().items():
        tensor, start = tensor.detach().cpu(), initial_state[name].detach().cpu()
        head = {"name": name, "shape": list(tensor.shape), "dtype": str(tensor.dtype)[6:]}
        if name in sub.masks:
            changed = (tensor != start) & (sub.masks[name].cpu() != 0)
            count = int(changed.sum())
            if count == 0:
                continue
            if 2 * count < tensor.numel():  # indices and values take less than the tensor
                index = changed.reshape(-1).nonzero().reshape(-1)
                index = index.to(torch.int32 if tensor.numel() < 2**31 else torch.int64)
                values = tensor.reshape(-1)[index.long()]
                at = put(tensor_bytes(index))
                stored.append(
                    {
                        **head,
                        "kind": "entries",
                        "count": count,
                        "index_dtype": str(index.dtype)[6:],
                        "index": at,
                        **put(tensor_bytes(values)),
                    }
                )
                continue
        elif torch.equal(tensor, start):
            continue
        stored.append({**head, "kind": "full", **put(tensor_bytes(tensor))})
    payload = b"".join(chunks)
    header = {
        "format": FORMAT,
        "fewmask_version": __version__,
        "torch_version": torch.__version__,
        "device": "cpu",
        "generator": GENERATOR,
        "seed": sub.seed,
        "config": sub.config,
        "input_shape": list(sub.input_shape),
        "ways": sub.ways,
        "iteration": sub.iteration,
        "dtype": str(sub.dtype)[6:],
        "inner": sub.config.get("inner"),
        "digest": sub.digest(),
        "masks": masks,
        "stored": stored,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    text = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<Q", len(text)) + text + payload


def is_packed(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_header(data: bytes, path: Path | str) -> tuple[dict[str, Any], bytes]:
    """The header and the verified payload of a packed file's bytes."""
    if data[: len(MAGIC)] != MAGIC:
        raise ExportError(f"{path}: not a fewmask packed file (no {MAGIC!r} at its start)")
    start = len(MAGIC) + 8
    if len(data) < start:
        raise ExportError(f"{path}: truncated packed file ({len(data)} bytes, no header)")
    (length,) = struct.unpack("<Q", data[len(MAGIC) : start])
    if len(data) < start + length:
        raise ExportError(
            f"{path}: truncated packed file: its header needs {length} bytes, "
            f"{len(data) - start} are left"
        )
    try:
        header = json.loads(data[start : start + length])
        expected, digest = int(header["payload_bytes"]), str(header["payload_sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{path}: corrupt packed header ({exc})") from None
    payload = data[start + length :]
    if len(payload) != expected:
        raise ExportError(
            f"{path}: truncated or padded packed file: {len(payload)} payload bytes, "
            f"the header says {expected}"
        )
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ExportError(
            f"{path}: the masks or stored weights were altered (flipped bits or tampering): "
            "their SHA-256 is not the one recorded when the file was written; export it again"
        )
    return header, payload


def unpack(data: bytes, path: Path | str, *, registry: Registry) -> Subnetwork:
    """The network of a packed file's bytes, regenerated and verified."""
    header, payload = read_header(data, path)
    try:
        config, shape = header["config"], tuple(header["input_shape"])
        initial = regenerate(config, shape, registry=registry)
        backbone = initial.backbone
        params = backbone.state_dict()
        dtype = next(iter(backbone.parameters())).dtype
        with torch.no_grad():
            for item in header["stored"]:
                target = params[item["name"]]
                values = _array(payload, item, getattr(torch, item["dtype"]))
                if item["kind"] == "full":
                    target.copy_(values.reshape(target.shape))
                else:
                    index = _array(payload, item["index"], getattr(torch, item["index_dtype"]))
                    target.view(-1)[index.long()] = values.to(target.dtype)
        masks = {}
        for item in header["masks"]:
            numel = int(np.prod(item["shape"], dtype=np.int64))
            raw = np.frombuffer(_slice(payload, item), dtype=np.uint8)
            bits = np.unpackbits(raw, count=numel).astype(bool)
            masks[item["name"]] = torch.from_numpy(bits).reshape(item["shape"]).to(dtype)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ExportError(f"{path}: the packed file does not fit its config ({exc})") from None
    sub = Subnetwork(
        backbone,
        masks,
        initial.inner,
        initial.objective,
        dict(config),
        shape,  # type: ignore[arg-type]
        int(header["ways"]),
        int(header["iteration"]),
        str(path),
    )
    check_digest(sub, header, path)
    return sub


def check_digest(sub: Subnetwork, header: dict[str, Any], path: Path | str) -> None:
    """Refuse a regenerated network whose digest is not the recorded one, naming both
    torch versions and devices."""
    found = sub.digest()
    if found != header["digest"]:
        raise ExportError(
            f"{path}: the regenerated network is not the exported one (SHA-256 {found[:16]}... "
            f"instead of {str(header['digest'])[:16]}...). It was written with torch "
            f"{header.get('torch_version')} on {header.get('device')} (fewmask "
            f"{header.get('fewmask_version')}); this is torch {torch.__version__} on cpu "
            f"(fewmask {__version__}), whose random draws differ, or the file was altered. "
            "Load it with the torch version that wrote it, or export the run with "
            "--format safetensors, which stores the weights themselves"
        )


def _slice(payload: bytes, where: dict[str, Any]) -> bytes:
    start, length = int(where["offset"]), int(where["length"])
    if start < 0 or start + length > len(payload):
        raise ValueError(f"an array at bytes {start}..{start + length} past the payload's end")
    return payload[start : start + length]


def _array(payload: bytes, where: dict[str, Any], dtype: torch.dtype) -> Tensor:
    data = _slice(payload, where)
    size = torch.empty((), dtype=dtype).element_size()
    return tensor_from_bytes(data, dtype, [len(data) // size])


def load_packed(path: Path, *, registry: Registry) -> Subnetwork:
    """Read, regenerate and verify the packed file at ``path``."""
    return unpack(Path(path).read_bytes(), path, registry=registry)
