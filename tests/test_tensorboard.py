"""What a run tells TensorBoard, read back from its event files: the config as text, the
hyperparameters with the final metrics, ``test/accuracy``, mask pictures, score histograms even
for a short run, and the run named after its folder. Also the experiments' progress labels."""

from __future__ import annotations

import io

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import plugin_data_pb2

from fewmask import TrainConfig, Trainer, create
from fewmask.runtime.progress import Progress, labelled
from fewmask.testing import make_dataset

LAYER = "features.1.linear.weight"
SHAPE = (1, 28, 28)


def train(run_dir, masker: str, iterations: int = 3, **options) -> dict:
    data = make_dataset()
    objective = "metaticket" if masker == "metaticket" else "maml"
    settings = {"iterations": iterations, "val_episodes": 0, "test_episodes": 4, "progress": False}
    trainer = Trainer(
        create(
            "backbone", "omniglot_mlp", {"hidden": [16]}, input_shape=(1, 28, 28), num_classes=5
        ),
        create("masker", masker),
        create("inner", "sgd"),
        create("objective", objective),
        create("sampler", "episodic", {"ways": 5, "shots": 1}),
        {"train": data, "test": make_dataset(seed=1)},
        TrainConfig(**settings | options),
        run_dir=run_dir,
        config={"objective": {"name": objective}, "note": "a config"},
    )
    return trainer.fit()


def events(folder) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def metaticket_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    results = train(root / "mt-short", "metaticket", mask_image_every=2)
    return root, results


def test_every_tag_is_in_the_event_files(metaticket_run):
    root, results = metaticket_run
    run = events(root / "mt-short")
    tags = run.Tags()
    # the final meta-test, at the last iteration
    (accuracy,) = run.Scalars("test/accuracy")
    assert (accuracy.step, accuracy.value) == (3, pytest.approx(results["accuracy"]))
    assert {"test/loss", "test/ci95", "train/loss"} <= set(tags["scalars"])
    # the config as text, with the thread count
    (config,) = run.Tensors("config/text_summary")
    text = config.tensor_proto.string_val[0].decode()
    assert "note: a config" in text and "threads: 1 CPU thread" in text
    # a 3-iteration run still gets score histograms (histogram_every is 1000): at the start
    # and at its end
    assert [h.step for h in run.Histograms(f"scores/{LAYER}")] == [0, 3]
    # every masked layer (here one) as a picture, at the start, every 2 iterations and at the end
    images = run.Images(f"masks/{LAYER}")
    assert [i.step for i in images] == [0, 2, 3]
    from PIL import Image

    picture = Image.open(io.BytesIO(images[-1].encoded_image_string))
    assert picture.size == (4 * 29 + 1, 4 * 29 + 1)  # 16 units of 28x28, 4x4, 1 px padding


def test_the_hyperparameters_come_with_the_final_metrics(metaticket_run):
    root, results = metaticket_run
    content = events(root / "mt-short").PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metrics = [m.name.tag for m in experiment.experiment.metric_infos]
    assert "test/accuracy" in metrics and "test/loss" in metrics
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["objective.name"].string_value == "metaticket"
    assert hparams["train.iterations"].number_value == 3
    assert hparams["threads"].number_value == results["threads"] == 1


def test_runs_are_named_after_their_folders(metaticket_run, tmp_path):
    root, _ = metaticket_run
    train(root / "maml-short", "dense")
    mux = EventMultiplexer().AddRunsFromDirectory(str(root))
    mux.Reload()
    assert set(mux.Runs()) == {"mt-short", "maml-short"}
    # a dense run has no masks to draw
    assert not events(root / "maml-short").Tags()["images"]


def test_an_earlier_runs_tensorboard_folder_is_kept(tmp_path):
    from fewmask.runtime.folder import RunFolder

    run = RunFolder(tmp_path / "old")
    assert run.tensorboard == run.path
    (run.path / "tensorboard").mkdir(parents=True)
    (run.path / "tensorboard" / "events.out.tfevents.1.host.2.0").write_bytes(b"")
    assert run.tensorboard == run.path / "tensorboard"


def test_progress_lines_name_the_experiment_variant():
    stream = io.StringIO()
    with labelled("[width-sweep: w0.5]"):
        with Progress(2, "meta-train", stream=stream) as bar:
            bar.update(2)
    with Progress(2, "meta-train", stream=stream) as bar:
        bar.update(2)
    first, second = stream.getvalue().splitlines()
    assert first.startswith("[width-sweep: w0.5] meta-train [") and second.startswith("meta-train")


def test_an_experiment_labels_its_variants_progress(tmp_path, monkeypatch):
    """`fewmask experiment` runs each variant inside the label (checked on one variant)."""
    import fewmask.session
    from fewmask.experiments.jobs import Job, run_job

    seen = []

    def train(config, run_dir, **kwargs):
        seen.append(Progress(1, "x", enabled=False).label)

    monkeypatch.setattr(fewmask.session, "train", train)
    job = Job("w0.5", {"run_dir": str(tmp_path / "w0.5")}, experiment="width-sweep")
    run_job(job, isolate=False)
    assert seen == ["[width-sweep: w0.5] x"]
