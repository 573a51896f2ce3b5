"""`fewmask adapt MODEL --support DIR --query DIR --out FILE` on glyph images written as PNG
files: the same adaptation as meta-test, an ONNX file that onnxruntime runs alike, clear
refusals (exit 2, nothing written) for unusable folders."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fewmask
from fewmask.cli import main
from fewmask.datasets.glyphs import load_glyph_split
from fewmask.engine.exact import evaluate_episode
from fewmask.export import onnx_io
from fewmask.interfaces import Episode

EXAMPLE = Path(__file__).parents[1] / "examples" / "metaticket_glyphs.yaml"
TINY = [
    "train.iterations=3",
    "train.test_episodes=10",
    "train.val_episodes=0",
    "train.progress=false",
    "backbone.options={hidden: [32, 16]}",
    "masker={name: metaticket, options: {init_sparsity: 0.5}}",
]
WAYS, SHOTS, QUERIES = 5, 2, 3


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny 5-way Meta-ticket run, exported packed."""
    root = tmp_path_factory.mktemp("adapt")
    args = ["train", str(EXAMPLE), "--run-dir", str(root / "run")]
    assert main(args + [x for o in TINY for x in ("-o", o)]) == 0
    return fewmask.export_run(root / "run", "packed", root / "model.fmpack", timing=False).path


@pytest.fixture(scope="module")
def glyphs() -> np.ndarray:
    """uint8 [classes, 20, 28, 28] of the glyph set's test alphabets."""
    images, _ = load_glyph_split("test")
    return images


def write_folder(root: Path, images: np.ndarray, names: list[str]) -> Path:
    """``root/<name>/<i>.png`` for every class's images."""
    for name, group in zip(names, images):
        (root / name).mkdir(parents=True)
        for i, image in enumerate(group):
            Image.fromarray(image).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture
def folders(tmp_path, glyphs) -> tuple[Path, Path, np.ndarray]:
    names = [f"glyph{c}" for c in range(WAYS)]
    picked = glyphs[10 : 10 + WAYS]
    support = write_folder(tmp_path / "support", picked[:, :SHOTS], names)
    query = write_folder(tmp_path / "query", picked[:, SHOTS : SHOTS + QUERIES], names)
    return support, query, picked


def test_adapting_to_png_folders_is_the_meta_test_adaptation(model, folders, tmp_path):
    support, query, picked = folders
    out, predictions = tmp_path / "adapted.onnx", tmp_path / "pred.csv"
    result = fewmask.adapt(model, support, query, out=out, predictions=predictions)
    # the reference: the engine's meta-test of the same images as one episode
    sub = fewmask.load_export(model)
    labels = torch.arange(WAYS)
    episode = Episode(
        torch.from_numpy(picked[:, :SHOTS]).reshape(-1, 1, 28, 28),
        labels.repeat_interleave(SHOTS),
        torch.from_numpy(picked[:, SHOTS : SHOTS + QUERIES]).reshape(-1, 1, 28, 28),
        labels.repeat_interleave(QUERIES),
    ).to("cpu")
    loss, metrics = evaluate_episode(sub.backbone, sub.inner, sub.objective, sub.masks, episode)
    assert result.accuracy == pytest.approx(float(metrics["accuracy"]), abs=1e-6)
    logits = onnx_io.torch_logits(result.network, episode.query_x)
    assert torch.equal(torch.nn.functional.cross_entropy(logits, episode.query_y), loss)
    assert "head kept" in result.head
    rows = list(csv.DictReader(predictions.read_text().splitlines()))
    assert [r["file"] for r in rows] == [str(p.file) for p in result.predictions]
    assert len(rows) == WAYS * QUERIES and set(rows[0]) == {"file", "class", "probability", "label"}
    correct = sum(r["class"] == r["label"] for r in rows)
    assert correct / len(rows) == pytest.approx(result.accuracy)
    # the adapted network's ONNX file under onnxruntime: torch's outputs
    x = episode.query_x
    expected = onnx_io.torch_logits(result.network, x)
    torch.testing.assert_close(
        onnx_io.run_onnx(out.read_bytes(), x), expected, rtol=1e-4, atol=1e-4
    )
    probabilities = expected.softmax(1).max(1).values
    assert [float(r["probability"]) for r in rows] == pytest.approx(
        probabilities.tolist(), abs=1e-6
    )


def test_the_command_adapts_a_run_folder_too_and_saves_safetensors(
    model, folders, tmp_path, capsys
):
    support, query, _ = folders
    run = model.parent / "run"
    out, predictions = tmp_path / "adapted.safetensors", tmp_path / "p.csv"
    args = ["adapt", str(run), "--support", str(support), "--query", str(query)]
    assert main([*args, "--out", str(out), "--predictions", str(predictions)]) == 0
    printed = capsys.readouterr().out
    assert "query accuracy" in printed and "head kept" in printed
    adapted = fewmask.load_export(out)  # verified on loading
    assert adapted.ways == WAYS and adapted.masks
    from_export = fewmask.adapt(model, support)
    for name, tensor in adapted.masked_state().items():
        assert torch.equal(tensor, from_export.network.masked_state()[name]), name


def test_unlabelled_query_images_get_predictions_only(model, folders, tmp_path):
    support, query, _ = folders
    loose = tmp_path / "loose"
    loose.mkdir()
    for path in sorted(query.glob("*/*.png"))[:4]:
        (loose / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())
    result = fewmask.adapt(model, support, loose, predictions=tmp_path / "p.csv")
    assert result.accuracy is None and len(result.predictions) == 4
    header = next(csv.reader((tmp_path / "p.csv").read_text().splitlines()))
    assert header == ["file", "class", "probability"]


def test_other_ways_need_a_rebuilt_head(model, folders, tmp_path, capsys):
    support, _, _ = folders
    for extra in sorted(support.iterdir())[3:]:  # 3 classes left
        for f in extra.iterdir():
            f.unlink()
        extra.rmdir()
    assert main(["adapt", str(model), "--support", str(support)]) == 2
    assert "3 classes, but the head predicts 5" in capsys.readouterr().err
    assert main(["adapt", str(model), "--support", str(support), "--rebuild-head"]) == 0
    assert "head rebuilt: a fresh, unmasked classifier of 3 outputs" in capsys.readouterr().out


def refused(args: list[str], capsys, fragment: str, tmp_path: Path) -> None:
    before = sorted(tmp_path.rglob("*"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert fragment in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize(
    "damage, message",
    [
        ("empty class", "holds no images"),
        ("unreadable image", "cannot decode image"),
        ("one class", "a classifier needs at least two"),
        ("no images", "no class subfolders and no images"),
        ("missing", "does not exist"),
    ],
)
def test_unusable_folders_are_refused_and_nothing_is_written(
    model, folders, tmp_path, capsys, damage, message
):
    support, query, _ = folders
    classes = sorted(support.iterdir())
    if damage == "empty class":
        for f in classes[1].iterdir():
            f.unlink()
    elif damage == "unreadable image":
        (classes[2] / "00.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif damage == "one class":
        support = tmp_path / "one"
        (support / "only").mkdir(parents=True)
        (support / "only" / "a.png").write_bytes((classes[0] / "00.png").read_bytes())
    elif damage == "no images":
        support = tmp_path / "nothing"
        support.mkdir()
    else:
        support = tmp_path / "absent"
    out = tmp_path / "adapted.onnx"
    args = ["adapt", str(model), "--support", str(support), "--query", str(query)]
    refused(
        [*args, "--out", str(out), "--predictions", str(tmp_path / "p.csv")],
        capsys,
        message,
        tmp_path,
    )


def test_a_query_class_the_support_lacks_is_refused(model, folders, tmp_path, capsys):
    support, query, _ = folders
    (query / "glyph0").rename(query / "stranger")
    args = ["adapt", str(model), "--support", str(support), "--query", str(query)]
    refused([*args, "--predictions", str(tmp_path / "p.csv")], capsys, "stranger", tmp_path)


def test_a_bad_out_suffix_is_refused(model, folders, tmp_path, capsys):
    support, _, _ = folders
    args = ["adapt", str(model), "--support", str(support), "--out", str(tmp_path / "m.pt")]
    refused(args, capsys, ".safetensors or .onnx", tmp_path)


def test_a_missing_model_is_refused(folders, tmp_path, capsys):
    support, _, _ = folders
    args = ["adapt", str(tmp_path / "no-run"), "--support", str(support)]
    refused(args, capsys, "does not exist", tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    args = ["adapt", str(tmp_path / "m.onnx"), "--support", str(support)]
    refused(args, capsys, "forward pass only", tmp_path)
