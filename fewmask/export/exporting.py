"""``fewmask export``: write a run's (or an adapted) subnetwork in one format, with its report.

Every file is read back before it is kept: a packed or safetensors export must load to the same
SHA-256 of the masked weights, and an ONNX export must give torch's outputs under onnxruntime
(when onnxruntime is installed). Files are written through a temporary file; an existing file
is replaced only with ``force``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from fewmask.errors import ExportError, RunStoppedError
from fewmask.export import onnx_io, packed, safetensors_io
from fewmask.export.regenerate import regenerate
from fewmask.export.report import build_report, report_text, write_report
from fewmask.export.sources import read_run
from fewmask.export.sparse import time_forwards
from fewmask.export.subnetwork import Subnetwork
from fewmask.registry import Registry

SUFFIXES = {"packed": ".fmpack", "safetensors": ".safetensors", "onnx": ".onnx"}
"""Each format and the suffix of its files."""
ONNX_TOLERANCE = 1e-4
"""Largest absolute difference of logits accepted between onnxruntime and torch (float32)."""


@attrs.frozen
class ExportResult:
    """What :func:`export_run` wrote: the export, its report (data and Markdown) and their
    files."""

    path: Path
    report: dict[str, Any]
    text: str
    report_files: tuple[Path, ...]


def serialize(sub: Subnetwork, format: str, *, registry: Registry) -> bytes:
    """``sub`` in ``format``, checked by reading it back."""
    if format == "packed":
        data = packed.pack(sub, regenerate(sub.config, sub.input_shape, registry=registry))
        packed.unpack(data, f"{sub.source} (packed)", registry=registry)  # regenerates, verifies
        return data
    if format == "safetensors":
        data = safetensors_io.to_bytes(sub)
        safetensors_io.from_bytes(data, f"{sub.source} (safetensors)", registry=registry)
        return data
    if format == "onnx":
        data = onnx_io.to_bytes(sub)
        if _installed("onnxruntime"):
            difference = onnx_io.check_onnx(sub, data)
            if not difference <= ONNX_TOLERANCE:
                raise ExportError(
                    f"{sub.source}: the ONNX model's outputs differ from torch's by "
                    f"{difference:.3g} (more than {ONNX_TOLERANCE}); it is not written"
                )
        return data
    raise ExportError(f"--format: {format!r} is not one of {', '.join(SUFFIXES)}")


def check_target(path: Path, force: bool, what: str = "--out") -> None:
    """Refuse to replace an existing file without ``force``, or to write over a folder."""
    if path.is_dir():
        raise ExportError(f"{what}: {path} is a folder; give a file name")
    if path.exists() and not force:
        raise ExportError(f"{what}: {path} already exists; choose another name or pass --force")
    if not path.parent.is_dir():
        raise ExportError(f"{what}: the folder {path.parent} does not exist")


def write_atomic(data: bytes, path: Path) -> None:
    """Write ``data`` through a temporary file beside ``path``, renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def measure_formats(
    sub: Subnetwork, made: dict[str, bytes], *, registry: Registry
) -> tuple[dict[str, int | None], dict[str, str]]:
    """The bytes of every format (those in ``made`` as they are; the others serialised here),
    and why a format could not be made."""
    sizes: dict[str, int | None] = {}
    notes: dict[str, str] = {}
    for format in SUFFIXES:
        try:
            data = made[format] if format in made else serialize(sub, format, registry=registry)
        except ExportError as exc:
            sizes[format], notes[format] = None, str(exc).split(": ", 1)[-1][:200]
            continue
        sizes[format] = len(data)
        if format == "packed":
            notes["packed stores"] = packed_contents(data)
    return sizes, notes


def packed_contents(data: bytes) -> str:
    """What a packed file holds besides its masks, in words."""
    header, _ = packed.read_header(data, "packed")
    bits = sum(int(np.prod(m["shape"])) for m in header["masks"])
    stored = [
        f"{s['name']} ({s['count']:,} kept entries re-drawn by IteRand or learned)"
        if s["kind"] == "entries"
        else f"{s['name']} (in full: learned)"
        for s in header["stored"]
    ]
    rest = "; ".join(stored) if stored else "nothing else: the seed regenerates every weight"
    return f"{bits:,} mask bits; {rest}"


def export_subnetwork(
    sub: Subnetwork,
    format: str,
    out: Path,
    *,
    registry: Registry,
    force: bool = False,
    checkpoint_bytes: int | None = None,
    timing: bool = True,
) -> ExportResult:
    """Write ``sub`` as ``format`` to ``out``, and its report beside it."""
    if format not in SUFFIXES:
        raise ExportError(f"--format: {format!r} is not one of {', '.join(SUFFIXES)}")
    out = Path(out)
    check_target(out, force)
    data = serialize(sub, format, registry=registry)
    sizes, notes = measure_formats(sub, {format: data}, registry=registry)
    report = build_report(
        sub, sizes, checkpoint_bytes, time_forwards(sub) if timing else None, notes
    )
    write_atomic(data, out)
    files = write_report(report, out)
    return ExportResult(out, report, report_text(report), files)


def export_run(
    run: str | Path,
    format: str = "packed",
    out: str | Path | None = None,
    *,
    registry: Registry,
    force: bool = False,
    timing: bool = True,
) -> ExportResult:
    """Export the subnetwork of the run in ``run`` (default file: ``RUN/export.<suffix>``)."""
    if format not in SUFFIXES:
        raise ExportError(f"--format: {format!r} is not one of {', '.join(SUFFIXES)}")
    sub, trainer = read_run(run, registry=registry, what="RUN")
    stopped = trainer.run.read_stopped() if trainer.run is not None else None
    if stopped is not None:  # as `fewmask test` refuses it
        raise RunStoppedError(
            f"{run} stopped at iteration {stopped.get('iteration')}: {stopped.get('reason')}. "
            f"Its checkpoint (iteration {sub.iteration}) is not a finished run; remove "
            f"{trainer.run.stopped} to export that checkpoint anyway"
        )
    target = Path(out) if out is not None else Path(run) / f"export{SUFFIXES[format]}"
    check_target(target, force)
    checkpoint = trainer.run.loaded_from if trainer.run is not None else None
    size = checkpoint.stat().st_size if checkpoint is not None else None
    return export_subnetwork(
        sub, format, target, registry=registry, force=force, checkpoint_bytes=size, timing=timing
    )


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
