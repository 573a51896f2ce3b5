"""The export report: density per layer, parameters kept, bytes of every format, CPU timings.

Every number in it is measured when it is made: the file sizes are the lengths of the files as
serialised in this process (against the run's checkpoint file and the fp32 weights), and the
timings come from :func:`fewmask.export.sparse.time_forwards` in the same run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fewmask.export.subnetwork import Subnetwork, density


def build_report(
    sub: Subnetwork,
    sizes: dict[str, int | None],
    checkpoint_bytes: int | None,
    timing: dict[str, Any] | None,
    notes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The report as plain data. ``sizes``: bytes of each format (None: not made, see
    ``notes``); ``checkpoint_bytes``: the run's checkpoint file, if known."""
    per_layer, overall = density(sub.masks)
    params = dict(sub.backbone.named_parameters())
    layers = [
        {
            "name": name,
            "shape": list(mask.shape),
            "weights": mask.numel(),
            "kept": int((mask != 0).sum()),
            "density": per_layer[name],
        }
        for name, mask in sub.masks.items()
    ]
    masked = sum(layer["weights"] for layer in layers)
    kept_masked = sum(layer["kept"] for layer in layers)
    others = sum(p.numel() for n, p in params.items() if n not in sub.masks)
    fp32 = 4 * sum(t.numel() for t in sub.backbone.state_dict().values())
    formats = {}
    for name, size in sizes.items():
        entry: dict[str, Any] = {"bytes": size}
        if size:
            entry["fp32_over_this"] = fp32 / size
            if checkpoint_bytes:
                entry["checkpoint_over_this"] = checkpoint_bytes / size
        formats[name] = entry
    return {
        "source": sub.source,
        "iteration": sub.iteration,
        "dense": sub.dense,
        "layers": layers,
        "density": overall,
        "parameters": {
            "total": masked + others,
            "kept": kept_masked + others,
            "masked_weights": masked,
            "masked_weights_kept": kept_masked,
            "unmasked": others,
        },
        "bytes": {"fp32_weights": fp32, "checkpoint": checkpoint_bytes, "formats": formats},
        "cpu_forward": timing,
        "notes": dict(notes or {}),
    }


def report_text(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    lines = [f"# Export report: {report['source']} (iteration {report['iteration']})", ""]
    if report["layers"]:
        lines += ["| layer | shape | kept / weights | density |", "|---|---|---|---|"]
        for layer in report["layers"]:
            lines.append(
                f"| {layer['name']} | {'x'.join(map(str, layer['shape']))} | "
                f"{layer['kept']:,} / {layer['weights']:,} | {100 * layer['density']:.2f} % |"
            )
        lines.append("")
        lines.append(f"Overall density of the masked weights: {100 * report['density']:.2f} %.")
    else:
        lines.append("Dense network: nothing is masked.")
    params = report["parameters"]
    lines.append(
        f"Parameters kept: {params['kept']:,} of {params['total']:,} "
        f"({params['masked_weights_kept']:,} masked weights kept, {params['unmasked']:,} "
        "unmasked parameters)."
    )
    size = report["bytes"]
    checkpoint = size["checkpoint"]
    lines += [
        "",
        f"fp32 weights: {size['fp32_weights']:,} bytes; training checkpoint: "
        + (f"{checkpoint:,} bytes." if checkpoint else "not available."),
        "",
        "| format | bytes | checkpoint / format | fp32 weights / format |",
        "|---|---|---|---|",
    ]
    for name, entry in size["formats"].items():
        if not entry["bytes"]:
            why = report["notes"].get(name, "not made")
            lines.append(f"| {name} | - ({why}) | - | - |")
            continue
        ratio = entry.get("checkpoint_over_this")
        lines.append(
            f"| {name} | {entry['bytes']:,} | {f'{ratio:.1f}x' if ratio else '-'} | "
            f"{entry['fp32_over_this']:.1f}x |"
        )
    timing = report["cpu_forward"]
    if timing:
        lines.append("")
        where = f"batch of {timing['batch']} images, {timing['threads']} thread(s)"
        if "sparse_ms" in timing:
            lines.append(
                f"CPU forward ({where}, median of {timing['repeats']}): dense masked "
                f"{timing['dense_ms']:.3f} ms, sparse CSR {timing['sparse_ms']:.3f} ms "
                f"(sparse/dense {timing['sparse_over_dense']:.2f}; "
                + ("sparse is faster" if timing["sparse_over_dense"] < 1 else "sparse is slower")
                + " at this density; outputs differ by at most "
                + f"{timing['max_abs_difference']:.2g})."
            )
        else:
            lines.append(
                f"CPU forward ({where}): dense masked {timing['dense_ms']:.3f} ms; "
                f"no sparse timing: {timing.get('why')}."
            )
    for name, note in report["notes"].items():
        if name not in size["formats"]:
            lines.append(f"- {name}: {note}")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], path: Path) -> tuple[Path, Path]:
    """Write ``PATH.report.json`` and ``PATH.report.md`` beside the export ``path``."""
    json_path = path.with_name(path.name + ".report.json")
    md_path = path.with_name(path.name + ".report.md")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(report_text(report))
    return json_path, md_path
