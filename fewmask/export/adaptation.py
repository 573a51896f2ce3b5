"""``fewmask adapt``: a meta-learned subnetwork adapted to a user's own labelled images.

The network takes its run's inner loop at meta-test (the inner optimizer's test steps and rates,
the objective's support loss, masks fixed) on the support images, all in one batch, exactly as
:func:`fewmask.engine.exact.evaluate_episode` adapts to an episode's support set; the query
images are then classified in one batch (BatchNorm uses the batch's statistics, as at meta-test).

The support folder's classes must be as many as the head's outputs (the run's ways). With
``rebuild_head`` the head is replaced by a fresh classifier of as many outputs as classes
(initialised with the run's seed, unmasked) that the test steps train from scratch.
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import attrs
import torch

from fewmask.engine.exact import masked_forward, support_loss_fn
from fewmask.errors import ExportError
from fewmask.export.exporting import check_target, serialize, write_atomic
from fewmask.export.images import ImageSet, read_query, read_support
from fewmask.export.safetensors_io import require
from fewmask.export.sources import open_model
from fewmask.export.subnetwork import Subnetwork
from fewmask.interfaces import Episode
from fewmask.registry import Registry

OUT_FORMATS = {".safetensors": "safetensors", ".onnx": "onnx"}


@attrs.frozen
class Prediction:
    file: Path
    predicted: str
    probability: float
    label: str | None


@attrs.frozen
class AdaptResult:
    """The adapted network, its query predictions and accuracy (when the query is labelled),
    what became of the head, and the files written."""

    network: Subnetwork
    classes: tuple[str, ...]
    predictions: tuple[Prediction, ...]
    accuracy: float | None
    head: str
    files: tuple[Path, ...]


def adapt_subnetwork(
    sub: Subnetwork, support: ImageSet, *, rebuild_head: bool = False
) -> tuple[Subnetwork, str]:
    """A copy of ``sub`` after its test-time inner loop on ``support``; and a sentence on the
    head."""
    ways = len(support.classes)
    backbone, masks, inner = copy.deepcopy(sub.backbone), dict(sub.masks), copy.deepcopy(sub.inner)
    if ways != sub.ways and not rebuild_head:
        raise ExportError(
            f"--support: {ways} classes, but the head predicts {sub.ways}; give {sub.ways} "
            f"class folders, or pass --rebuild-head for a fresh head of {ways} outputs"
        )
    if rebuild_head:
        head = {id(p) for p in backbone.get_classifier().parameters()}
        masks = {n: m for n, m in masks.items() if id(backbone.get_parameter(n)) not in head}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sub.seed)
            backbone.reset_classifier(ways)
        backbone.to(sub.dtype)
        note = f"head rebuilt: a fresh, unmasked classifier of {ways} outputs (seed {sub.seed})"
    else:
        note = f"head kept: the meta-learned head of {sub.ways} outputs"
    inner.attach(backbone)
    episode = Episode(support.images, support.labels, support.images[:0], support.labels[:0])
    episode = episode.to("cpu", sub.dtype)
    params = {n: p.detach().requires_grad_() for n, p in backbone.named_parameters()}
    loss = support_loss_fn(backbone, sub.objective, masks, episode)
    fast = inner.adapt(params, loss, training=False)
    with torch.no_grad():
        for name, param in backbone.named_parameters():
            param.copy_(fast[name].detach())
    adapted = attrs.evolve(
        sub, backbone=backbone, masks=masks, inner=inner, ways=ways, source=f"{sub.source} adapted"
    )
    return adapted, note


def classify(sub: Subnetwork, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities of uint8 ``images`` (one batch) under ``sub``'s masked forward."""
    x = Episode(images, images[:0], images, images[:0]).to("cpu", sub.dtype).query_x
    with torch.no_grad():
        logits = masked_forward(sub.backbone, dict(sub.backbone.named_parameters()), sub.masks, x)
    return logits.softmax(1)


def adapt(
    model: str | Path,
    support: str | Path,
    query: str | Path | None = None,
    *,
    registry: Registry,
    out: str | Path | None = None,
    predictions: str | Path | None = None,
    rebuild_head: bool = False,
    force: bool = False,
) -> AdaptResult:
    """Adapt the run or export ``model`` to the ``support`` folder; classify ``query``; write
    the predictions CSV (``predictions``, default ``predictions.csv`` when there is a query) and
    the adapted network (``out``: ``.safetensors`` or ``.onnx``). Bad input writes nothing."""
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        if out_path.suffix not in OUT_FORMATS:
            raise ExportError(
                f"--out: {out_path} must end in {' or '.join(OUT_FORMATS)} (the format to save in)"
            )
        check_target(out_path, force)
        require("safetensors" if out_path.suffix == ".safetensors" else "onnx")
    csv_path = Path(predictions) if predictions is not None else None
    if query is not None and csv_path is None:
        csv_path = Path("predictions.csv")
    if csv_path is not None:
        if query is None:
            raise ExportError("--predictions: there is no --query folder to predict")
        check_target(csv_path, force, "--predictions")
    sub = open_model(model, registry=registry)
    support_set = read_support(support, sub.input_shape)
    query_set = read_query(query, sub.input_shape, support_set.classes) if query else None
    adapted, note = adapt_subnetwork(sub, support_set, rebuild_head=rebuild_head)
    found: list[Prediction] = []
    accuracy = None
    if query_set is not None:
        probabilities = classify(adapted, query_set.images)
        best, index = probabilities.max(1)
        for i, path in enumerate(query_set.files):
            label = int(query_set.labels[i])
            found.append(
                Prediction(
                    path,
                    support_set.classes[int(index[i])],
                    float(best[i]),
                    support_set.classes[label] if label >= 0 else None,
                )
            )
        if query_set.labelled:
            accuracy = float((index == query_set.labels).double().mean())
    data = serialize(adapted, OUT_FORMATS[out_path.suffix], registry=registry) if out_path else b""
    files = []
    if csv_path is not None:
        write_predictions(found, csv_path)
        files.append(csv_path)
    if out_path is not None:
        write_atomic(data, out_path)
        files.append(out_path)
    return AdaptResult(adapted, support_set.classes, tuple(found), accuracy, note, tuple(files))


def write_predictions(predictions: list[Prediction], path: Path) -> None:
    """``file,class,probability`` (and ``label`` when the query is labelled), one row each."""
    labelled = bool(predictions) and all(p.label is not None for p in predictions)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "class", "probability", *(["label"] if labelled else [])])
        for p in predictions:
            row = [str(p.file), p.predicted, f"{p.probability:.6f}"]
            writer.writerow(row + ([p.label] if labelled else []))
    tmp.replace(path)
