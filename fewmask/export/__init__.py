"""Take a meta-learned subnetwork out of its run: export it, load it back, adapt it.

Formats (docs/export.md):

- ``packed``: the config and seed, one bit per maskable weight, and only what the seed cannot
  regenerate; loading regenerates and verifies the SHA-256 of the masked weights
  (:mod:`fewmask.export.packed`);
- ``safetensors``: the masked weights as a plain state dict, the masks beside them
  (:mod:`fewmask.export.safetensors_io`);
- ``onnx``: the forward pass (:mod:`fewmask.export.onnx_io`).

From Python, with the process's plugins unless ``registry=`` is given::

    result = fewmask.export_run("runs/metaticket_glyphs", format="packed")
    network = fewmask.load_export(result.path)          # a Subnetwork, verified
    adapted = fewmask.adapt(result.path, "my_images/support", "my_images/query")
"""

from __future__ import annotations

from pathlib import Path

from fewmask.export.adaptation import AdaptResult, Prediction, adapt_subnetwork
from fewmask.export.exporting import SUFFIXES, ExportResult, export_subnetwork
from fewmask.export.sources import export_trainer, is_export_file, open_model
from fewmask.export.subnetwork import FixedMasks, Subnetwork, masked_state, weights_digest
from fewmask.registry import Registry


def _registry(registry: Registry | None) -> Registry:
    from fewmask.session import default_registry

    return registry or default_registry()


def export_run(
    run: str | Path,
    format: str = "packed",
    out: str | Path | None = None,
    *,
    force: bool = False,
    timing: bool = True,
    registry: Registry | None = None,
) -> ExportResult:
    """Export the subnetwork of the run folder ``run`` as ``format`` (``packed``,
    ``safetensors`` or ``onnx``) to ``out`` (default ``RUN/export.<suffix>``), with its report
    beside it (``OUT.report.json``, ``OUT.report.md``)."""
    from fewmask.export.exporting import export_run as run_export

    return run_export(run, format, out, registry=_registry(registry), force=force, timing=timing)


def load_export(path: str | Path, *, registry: Registry | None = None) -> Subnetwork:
    """The network of a packed or safetensors export (or of a run folder), verified."""
    return open_model(path, registry=_registry(registry), what="EXPORT")


def adapt(
    model: str | Path,
    support: str | Path,
    query: str | Path | None = None,
    *,
    out: str | Path | None = None,
    predictions: str | Path | None = None,
    rebuild_head: bool = False,
    force: bool = False,
    registry: Registry | None = None,
) -> AdaptResult:
    """Adapt a run or export to an image folder (see :mod:`fewmask.export.adaptation`)."""
    from fewmask.export.adaptation import adapt as run_adapt

    return run_adapt(
        model,
        support,
        query,
        registry=_registry(registry),
        out=out,
        predictions=predictions,
        rebuild_head=rebuild_head,
        force=force,
    )


__all__ = [
    "SUFFIXES",
    "AdaptResult",
    "ExportResult",
    "FixedMasks",
    "Prediction",
    "Subnetwork",
    "adapt",
    "adapt_subnetwork",
    "export_run",
    "export_subnetwork",
    "export_trainer",
    "is_export_file",
    "load_export",
    "masked_state",
    "open_model",
    "weights_digest",
]
