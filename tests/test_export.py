"""`fewmask export`, `fewmask test EXPORT`: exported = trained, exactly; tampered and
impossible exports refused by name with exit status 2; the report agrees with the run."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
import torch

import fewmask
from fewmask.cli import main
from fewmask.export import onnx_io, packed

EXAMPLE = Path(__file__).parents[1] / "examples" / "metaticket_glyphs.yaml"
TINY = [
    "train.iterations=3",
    "train.test_episodes=10",
    "train.val_episodes=0",
    "train.progress=false",
    "backbone.options={hidden: [32, 16]}",
    "objective.options.warmup=0",  # the scores move from the first iteration
]
KINDS = {
    "metaticket": ["masker={name: metaticket, options: {init_sparsity: 0.5}}"],
    # pruned weights re-drawn after every iteration; some revive: stored as is in `packed`
    "iterand": [
        "masker={name: iterand, options: {period: 1, base: {name: metaticket, "
        "options: {init_sparsity: 0.5}}}}"
    ],
    "maml": ["objective={name: maml}"],
}


def options(items: list[str]) -> list[str]:
    return [x for item in items for x in ("-o", item)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny trained run of each kind: Meta-ticket, IteRand, MAML."""
    root = tmp_path_factory.mktemp("runs")
    found = {}
    for kind, extra in KINDS.items():
        folder = root / kind
        args = ["train", str(EXAMPLE), *options(TINY + extra), "--run-dir", str(folder)]
        assert main(args) == 0
        found[kind] = folder
    return found


def newest_test(folder: Path) -> dict:
    return json.loads(sorted(folder.glob("test-*.json"))[-1].read_text())


def export(run: Path, format: str, out: Path, capsys) -> Path:
    assert main(["export", str(run), "--format", format, "--out", str(out)]) == 0
    capsys.readouterr()
    return out


@pytest.mark.parametrize(
    "kind, format",
    [
        ("metaticket", "packed"),
        ("metaticket", "safetensors"),
        ("iterand", "packed"),
        ("iterand", "safetensors"),
        ("maml", "safetensors"),
    ],
)
def test_an_export_meta_tests_to_the_run_s_exact_results(runs, kind, format, tmp_path, capsys):
    out = export(runs[kind], format, tmp_path / f"model.{format}", capsys)
    assert main(["test", str(runs[kind])]) == 0
    assert main(["test", str(out)]) == 0
    trained, exported = newest_test(runs[kind]), newest_test(Path(f"{out}.tests"))
    for key in ("accuracy", "loss", "ci95", "episodes", "sparsity", "sparsity_layers"):
        assert exported[key] == trained[key], key  # bit for bit, float32 on the CPU


@pytest.mark.parametrize("kind", ["metaticket", "iterand"])
def test_packed_loads_back_to_the_identical_network(runs, kind, tmp_path, capsys):
    out = export(runs[kind], "packed", tmp_path / "model.fmpack", capsys)
    from_run = fewmask.load_export(runs[kind])
    loaded = fewmask.load_export(out)
    assert loaded.masks.keys() == from_run.masks.keys()
    for name, mask in from_run.masks.items():
        assert torch.equal(loaded.masks[name], mask), name
    expected = from_run.masked_state()
    for name, tensor in loaded.masked_state().items():
        assert torch.equal(tensor, expected[name]), name
    header, _ = packed.read_header(out.read_bytes(), out)
    stored = {item["kind"] for item in header["stored"]}
    # Meta-ticket learns only scores: the seed regenerates every weight; IteRand's revived
    # re-drawn weights are stored as they are
    assert stored == (set() if kind == "metaticket" else {"entries"})
    assert header["torch_version"] == torch.__version__ and header["seed"] == 1


def test_safetensors_weights_load_into_the_backbone_without_a_masker(runs, tmp_path, capsys):
    from safetensors.torch import load_file

    out = export(runs["metaticket"], "safetensors", tmp_path / "m.safetensors", capsys)
    tensors = load_file(str(out))
    backbone = fewmask.create(
        "backbone", "omniglot_mlp", {"hidden": [32, 16]}, input_shape=(1, 28, 28), num_classes=5
    )
    backbone.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("mask/")})
    run = fewmask.load_export(runs["metaticket"])
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(backbone(x), onnx_io.torch_logits(run, x))
    for name, mask in run.masks.items():
        assert torch.equal(tensors[f"mask/{name}"], mask.bool())


def test_onnx_export_matches_torch_under_onnxruntime(runs, tmp_path, capsys):
    out = export(runs["metaticket"], "onnx", tmp_path / "m.onnx", capsys)
    run = fewmask.load_export(runs["metaticket"])
    for batch in (3, 11):  # any batch size
        x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        expected = onnx_io.torch_logits(run, x)
        got = onnx_io.run_onnx(out.read_bytes(), x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert main(["test", str(out)]) == 2
    assert "forward pass only" in capsys.readouterr().err


def test_the_report_agrees_with_the_run_and_measures_every_size(runs, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = runs["metaticket"]
    result = fewmask.export_run(run, "packed", tmp_path / "m.fmpack")
    report = result.report
    results = json.loads((run / "results.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run))
    events.Reload()
    assert report["layers"]
    for layer in report["layers"]:
        name = layer["name"]
        sparsity = results["sparsity_layers"][name]
        assert layer["density"] == pytest.approx(1 - sparsity, abs=1e-12)
        logged = [m for m in metrics if m.get("tag") == f"sparsity/{name}"]
        assert logged[-1]["value"] == pytest.approx(sparsity, abs=1e-7), name
        final = events.Scalars(f"test/sparsity/{name}")[-1].value
        assert final == pytest.approx(sparsity, abs=1e-7), name
    assert 1 - report["density"] == pytest.approx(results["sparsity"], abs=1e-12)
    sizes = report["bytes"]
    assert sizes["formats"]["packed"]["bytes"] == result.path.stat().st_size
    assert sizes["checkpoint"] == (run / "checkpoint.pt").stat().st_size
    for entry in sizes["formats"].values():
        assert entry["checkpoint_over_this"] == sizes["checkpoint"] / entry["bytes"]
    # one bit per masked weight, against 32 for fp32: the packed file is the smallest
    packed_bytes = sizes["formats"]["packed"]["bytes"]
    assert packed_bytes < sizes["formats"]["safetensors"]["bytes"] / 10
    timing = report["cpu_forward"]
    assert timing["dense_ms"] > 0 and timing["sparse_ms"] > 0
    assert timing["max_abs_difference"] < 1e-4  # the CSR forward computes the same network
    assert report["notes"]["packed stores"].startswith(
        f"{sum(layer['weights'] for layer in report['layers']):,} mask bits; nothing else"
    )
    files = [Path(p) for p in result.report_files]
    assert json.loads(files[0].read_text()) == report and "| packed |" in files[1].read_text()


def test_the_command_prints_the_report(runs, tmp_path, capsys):
    assert main(["export", str(runs["iterand"]), "--out", str(tmp_path / "m.fmpack")]) == 0
    out = capsys.readouterr().out
    assert "checkpoint / format" in out and "sparse CSR" in out and "exported packed" in out
    assert "kept entries re-drawn by IteRand" in out


# ------------------------------------------------------------------------ refused, exit 2


def expect_refusal(args: list[str], capsys, *fragments: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_packed_is_refused_for_a_dense_run(runs, tmp_path, capsys):
    out = tmp_path / "m.fmpack"
    expect_refusal(
        ["export", str(runs["maml"]), "--format", "packed", "--out", str(out)],
        capsys,
        "dense run",
        "--format safetensors",
    )
    assert not out.exists()


def test_a_missing_run_is_refused(tmp_path, capsys):
    expect_refusal(["export", str(tmp_path / "nowhere")], capsys, "does not exist")
    expect_refusal(["test", str(tmp_path)], capsys, "no checkpoint")


def test_an_existing_file_is_not_replaced_without_force(runs, tmp_path, capsys):
    out = tmp_path / "mine.fmpack"
    out.write_text("not fewmask's")
    expect_refusal(["export", str(runs["metaticket"]), "--out", str(out)], capsys, "--force")
    assert out.read_text() == "not fewmask's"


@pytest.fixture(scope="module")
def packed_file(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "m.fmpack"
    fewmask.export_run(runs["iterand"], "packed", out, timing=False)
    return out


def rewrite(path: Path, data: bytes, tmp_path: Path) -> Path:
    target = tmp_path / "tampered.fmpack"
    target.write_bytes(data)
    return target


def with_header(data: bytes, change) -> bytes:
    (length,) = struct.unpack("<Q", data[8:16])
    header = json.loads(data[16 : 16 + length])
    change(header)
    text = json.dumps(header).encode()
    return data[:8] + struct.pack("<Q", len(text)) + text + data[16 + length :]


def test_a_flipped_bit_is_refused(packed_file, tmp_path, capsys):
    data = bytearray(packed_file.read_bytes())
    data[-40] ^= 0x10
    bad = rewrite(packed_file, bytes(data), tmp_path)
    expect_refusal(["test", str(bad)], capsys, "ExportError", "altered", str(bad))


def test_a_truncated_file_is_refused(packed_file, tmp_path, capsys):
    data = packed_file.read_bytes()
    for cut in (len(data) - 100, 30, 5):
        bad = rewrite(packed_file, data[:cut], tmp_path)
        expect_refusal(["test", str(bad)], capsys, "truncated")


def test_a_changed_digest_is_refused(packed_file, tmp_path, capsys):
    def change(header):
        header["digest"] = "0" * 64

    bad = rewrite(packed_file, with_header(packed_file.read_bytes(), change), tmp_path)
    expect_refusal(["test", str(bad)], capsys, "not the exported one", "0000000000000000")


def test_a_mask_changed_with_its_checksum_is_refused(packed_file, tmp_path, capsys):
    """A consistent-looking file (payload checksum recomputed) whose mask differs: the digest
    of the regenerated masked weights catches it."""
    import hashlib

    data = packed_file.read_bytes()
    (length,) = struct.unpack("<Q", data[8:16])
    payload = bytearray(data[16 + length :])
    payload[0] ^= 0x01  # the first mask's first byte

    def change(header):
        header["payload_sha256"] = hashlib.sha256(bytes(payload)).hexdigest()

    forged = with_header(data[: 16 + length] + bytes(payload), change)
    bad = rewrite(packed_file, forged, tmp_path)
    expect_refusal(["test", str(bad)], capsys, "not the exported one")


def test_another_torch_version_s_draws_are_refused_naming_both(
    packed_file, tmp_path, capsys, monkeypatch
):
    """Simulated: the file says another torch wrote it, and this one's initialisation draws
    other numbers (as another version's generator or kernels may)."""

    def change(header):
        header["torch_version"] = "2.0.0+simulated"

    bad = rewrite(packed_file, with_header(packed_file.read_bytes(), change), tmp_path)
    original = packed.regenerate

    def other_draws(config, shape, *, registry):
        initial = original(config, shape, registry=registry)
        with torch.no_grad():
            next(iter(initial.backbone.parameters())).mul_(1.0001)
        return initial

    monkeypatch.setattr(packed, "regenerate", other_draws)
    expect_refusal(
        ["test", str(bad)], capsys, "torch 2.0.0+simulated", f"this is torch {torch.__version__}"
    )


def test_a_tampered_safetensors_file_is_refused(runs, tmp_path, capsys):
    from safetensors.torch import load, save

    out = export(runs["maml"], "safetensors", tmp_path / "m.safetensors", capsys)
    data = out.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8 : 8 + length])["__metadata__"]
    tensors = load(data)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(save(tensors, metadata=metadata))
    expect_refusal(["test", str(bad)], capsys, "altered")
    bad.write_bytes(data[: len(data) // 2])
    expect_refusal(["test", str(bad)], capsys, "ExportError")


@pytest.mark.parametrize("module", ["safetensors", "onnx"])
def test_a_missing_library_names_the_extra(runs, module, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == module or m.startswith(f"{module}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import fails
    out = tmp_path / f"m.{module}"
    expect_refusal(
        ["export", str(runs["maml"]), "--format", module, "--out", str(out)],
        capsys,
        repr(module),
        'pip install "fewmask[export]"',
    )
    assert not out.exists()


def test_a_dense_run_s_report_has_no_mask_and_no_sparse_timing(runs, tmp_path):
    result = fewmask.export_run(runs["maml"], "safetensors", tmp_path / "m.safetensors")
    report = result.report
    assert report["dense"] and report["layers"] == [] and report["density"] == 1.0
    assert report["parameters"]["kept"] == report["parameters"]["total"]
    assert "sparse_ms" not in report["cpu_forward"] and "no mask" in report["cpu_forward"]["why"]
    assert report["bytes"]["formats"]["packed"]["bytes"] is None
    assert "Dense network" in result.text and "dense run" in result.text


def test_testing_an_export_refuses_another_model(runs, tmp_path, capsys):
    out = export(runs["metaticket"], "packed", tmp_path / "m.fmpack", capsys)
    args = ["test", str(out), "-o", "backbone.options.hidden=[8]"]
    expect_refusal(args, capsys, "$.backbone.options.hidden", "EXPORT")


def test_a_stopped_run_is_not_exported(runs, tmp_path, capsys):
    import shutil

    run = tmp_path / "stopped"
    shutil.copytree(runs["metaticket"], run)
    (run / "stopped.json").write_text(json.dumps({"iteration": 2, "reason": "loss is nan"}))
    assert main(["export", str(run)]) == 1
    assert "loss is nan" in capsys.readouterr().err and not (run / "export.fmpack").exists()
