"""Test helpers for fewmask and its plugins, importable without pytest.

- :func:`make_dataset`: random uint8 images in a :class:`~fewmask.interfaces.FewShotDataset`;
  :func:`random_episodes`: random float episodes;
- :func:`reference_meta_loss`, :func:`reference_meta_gradient`: the straightforward per-task
  loop (:func:`reference_task_loss`) that every engine path, test and benchmark is checked
  against, over the hand-written :func:`reference_mlp_forward` or any backbone
  (:func:`functional_forward`); :func:`reference_engine_gradient` and :func:`engine_gradient`
  put an :class:`~fewmask.engine.Engine`'s components through the loop and the engine, on
  any of the :data:`ENGINE_PATHS`.

:func:`adapt` (the inner loop) and :func:`masked_forward` are the exact engine's own pieces,
for tests that build on them. :func:`assert_same_runs` compares two output folders run for run;
:func:`assert_launcher_matches_serial` is the test a launcher plugin passes.

The pytest fixtures live in :mod:`fewmask.pytest_plugin`
(``pytest_plugins = ["fewmask.pytest_plugin"]``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from fewmask.engine import Engine, EngineOptions
from fewmask.engine.exact import adapt as adapt  # re-exported for plugin tests
from fewmask.engine.exact import masked_forward as masked_forward
from fewmask.interfaces import Episode, FewShotDataset

ENGINE_PATHS: dict[str, EngineOptions | None] = {
    "exact": None,
    "fused_sgd": EngineOptions(fused_sgd=True),
    "fused_batchnorm": EngineOptions(fused_batchnorm=True),
    "channels_last": EngineOptions(fused_batchnorm=True, channels_last=True),
    "fast": EngineOptions.fast(),
    "batched": EngineOptions.batched_path(),
}
"""Every path of :meth:`~fewmask.engine.Engine.meta_step` by name: the exact per-task path
(``None``), each speed lever alone (``channels_last`` with the fused BatchNorm it needs), all
of them, and the batched path (``train.engine: batched``)."""


def make_dataset(
    classes: int = 8,
    per_class: int = 6,
    shape: tuple[int, ...] = (1, 28, 28),
    seed: int = 0,
    name: str = "tiny",
) -> FewShotDataset:
    """Random uint8 images, ``per_class`` per class, sorted by class."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(
        0, 256, (classes * per_class, *shape), generator=generator, dtype=torch.uint8
    )
    labels = torch.arange(classes).repeat_interleave(per_class)
    return FewShotDataset(images, labels, tuple(f"c{i}" for i in range(classes)), name)


def random_episodes(
    count: int,
    ways: int,
    shots: int,
    queries: int,
    shape: tuple[int, ...],
    generator: torch.Generator,
    *,
    uniform: bool = False,
    dtype: torch.dtype | None = None,
) -> list[Episode]:
    """``count`` episodes of random float images (standard normal; uniform in [0, 1) with
    ``uniform``), ``shots`` support and ``queries`` query images per class, labelled
    ``0..ways-1`` in order. Each episode draws its support images, then its query images."""
    labels = torch.arange(ways)
    draw = torch.rand if uniform else torch.randn

    def images(n: int) -> torch.Tensor:
        return draw(n * ways, *shape, generator=generator, dtype=dtype)

    return [
        Episode(
            images(shots),
            labels.repeat_interleave(shots),
            images(queries),
            labels.repeat_interleave(queries),
        )
        for _ in range(count)
    ]


Forward = Callable[[dict, "dict | None", torch.Tensor], torch.Tensor]
"""``forward(params, masks, x) -> logits``: a network run with given (masked) parameters."""


def reference_mlp_forward(params: dict, masks: dict | None, x: torch.Tensor) -> torch.Tensor:
    """The ``omniglot_mlp``/``mlp5`` forward written out by hand (linear, batch_norm, relu).

    Independent of ``functional_call`` and the engine, for gradient tests. ``masks`` multiply
    the hidden Linear weights they name.
    """
    import torch.nn.functional as F

    h = x.flatten(1)
    layer = 1
    while f"features.{layer}.linear.weight" in params:
        name = f"features.{layer}.linear.weight"
        weight = params[name] * masks[name] if masks and name in masks else params[name]
        h = F.linear(h, weight, params[f"features.{layer}.linear.bias"])
        h = F.batch_norm(
            h,
            None,
            None,
            params[f"features.{layer}.normalize.weight"],
            params[f"features.{layer}.normalize.bias"],
            training=True,
            eps=1e-3,
        )
        h = torch.relu(h)
        layer += 1
    return F.linear(h, params["classifier.weight"], params["classifier.bias"])


def functional_forward(backbone: torch.nn.Module) -> Forward:
    """The forward of any backbone through ``torch.func.functional_call``, with every masked
    weight replaced by ``weight * mask``."""
    from torch.func import functional_call

    def forward(params: dict, masks: dict | None, x: torch.Tensor) -> torch.Tensor:
        masks = masks or {}
        masked = {n: p * masks[n] if n in masks else p for n, p in params.items()}
        return functional_call(backbone, masked, (x,))

    return forward


def reference_task_loss(
    forward: Forward,
    params: dict,
    masks: dict | None,
    episode,
    learning_rates: Mapping[str, float],
    steps: int,
    first_order: bool = False,
) -> torch.Tensor:
    """One task's query loss after ``steps`` plain SGD steps ``p - lr * g`` on its support set
    (parameters whose rate is 0 or missing are not adapted): the per-task reference loop."""
    import torch.nn.functional as F

    fast = dict(params)
    names = [n for n in fast if learning_rates.get(n, 0.0) != 0.0]
    for _ in range(steps):
        loss = F.cross_entropy(forward(fast, masks, episode.support_x), episode.support_y)
        grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=not first_order)
        fast = {**fast, **{n: fast[n] - learning_rates[n] * g for n, g in zip(names, grads)}}
    return F.cross_entropy(forward(fast, masks, episode.query_x), episode.query_y)


def reference_meta_loss(
    params: dict,
    masks: dict | None,
    episodes,
    learning_rates: Mapping[str, float],
    steps: int,
    first_order: bool = False,
    forward: Forward = reference_mlp_forward,
) -> torch.Tensor:
    """Mean query loss over tasks (:func:`reference_task_loss`), differentiable w.r.t. params
    and masks: what every engine path is checked against. ``forward`` defaults to the
    hand-written MLP; :func:`functional_forward` runs any backbone."""
    total = 0.0
    for episode in episodes:
        total = total + reference_task_loss(
            forward, params, masks, episode, learning_rates, steps, first_order
        )
    return total / len(episodes)


def reference_meta_gradient(
    forward: Forward,
    params: dict,
    masks: Callable[[], dict | None],
    episodes,
    learning_rates: Mapping[str, float],
    steps: int,
    targets: list[torch.Tensor],
    first_order: bool = False,
) -> list[torch.Tensor]:
    """The gradient of :func:`reference_meta_loss` w.r.t. ``targets``, one task at a time (one
    task's graph alive, as learn2learn and the authors' code do). ``masks()`` is called per
    task, e.g. ``masker.masks``, so each task's backward has its own mask graph."""
    total: list[torch.Tensor | None] = [None] * len(targets)
    for episode in episodes:
        loss = reference_task_loss(
            forward, params, masks(), episode, learning_rates, steps, first_order
        )
        grads = torch.autograd.grad(loss / len(episodes), targets, allow_unused=True)
        for i, grad in enumerate(grads):
            if grad is not None:
                total[i] = grad if total[i] is None else total[i] + grad
    return [torch.zeros_like(t) if g is None else g for t, g in zip(targets, total)]


def reference_engine_gradient(
    engine: Engine, episodes: Sequence[Episode], learning_rate: float, steps: int
) -> list[torch.Tensor]:
    """:func:`reference_meta_gradient` over ``engine``'s backbone and masker: every backbone
    parameter adapted at ``learning_rate`` for ``steps`` second-order steps, differentiated
    w.r.t. ``engine.meta_params`` (in their order)."""
    params = dict(engine.backbone.named_parameters())
    return reference_meta_gradient(
        functional_forward(engine.backbone),
        params,
        engine.masker.masks,
        episodes,
        dict.fromkeys(params, learning_rate),
        steps,
        list(engine.meta_params.values()),
    )


def engine_gradient(engine: Engine, episodes: Sequence[Episode]) -> list[torch.Tensor]:
    """``engine.meta_step(episodes)``'s gradients in the order of ``engine.meta_params``, zeros
    for meta-parameters that got none (to compare with :func:`reference_engine_gradient`)."""
    grads = engine.meta_step(episodes).grads
    return [grads.get(n, torch.zeros_like(p)) for n, p in engine.meta_params.items()]


PLACE_KEYS = ("run_dir", "sha256")
"""Checkpoint entries that say where a run is (and the digest over them), not what it computed."""


def checkpoint_tensors_equal(a: Mapping, b: Mapping, path: str = "$") -> None:
    """Assert that two checkpoints (or any nested data) hold equal values, tensors bit for bit,
    apart from :data:`PLACE_KEYS`; the message names the first difference's path."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys_a = {k for k in a if k not in PLACE_KEYS}
        keys_b = {k for k in b if k not in PLACE_KEYS}
        assert keys_a == keys_b, f"{path}: keys differ: {sorted(map(str, keys_a ^ keys_b))}"
        for key in keys_a:
            checkpoint_tensors_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), f"{path}: types"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{tuple(a.shape)}"
        assert torch.equal(a, b), f"{path}: tensors differ"
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            checkpoint_tensors_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def assert_same_runs(a: str | Path, b: str | Path) -> list[str]:
    """Assert that two experiment or sweep output folders hold the same runs (by folder name),
    each with equal ``results.json`` and checkpoints (:func:`checkpoint_tensors_equal`);
    returns the run names."""
    import json

    from fewmask.runtime.checkpoint import load_checkpoint

    a, b = Path(a) / "runs", Path(b) / "runs"
    names = sorted(p.name for p in a.iterdir() if p.is_dir())
    assert names and names == sorted(p.name for p in b.iterdir() if p.is_dir()), (names, b)
    for name in names:
        results = [json.loads((root / name / "results.json").read_text()) for root in (a, b)]
        assert results[0] == results[1], f"{name}: results differ"
        checkpoint_tensors_equal(
            load_checkpoint(a / name / "checkpoint.pt"),
            load_checkpoint(b / name / "checkpoint.pt"),
            name,
        )
    return names


TINY_SWEEP = """\
seed: 1
run_dir: unused
dataset: {name: glyphs}
sampler: {name: episodic, options: {ways: 5, shots: 1}}
backbone: {name: omniglot_mlp, options: {hidden: [8]}}
objective: {name: metaticket}
inner: {name: sgd, options: {lr: 0.4, steps: 1, test_steps: 3}}
train: {iterations: 2, meta_batch_size: 4, val_episodes: 0, test_episodes: 4, threads: 1}
"""
"""The base config of :func:`assert_launcher_matches_serial`'s sweep: seconds on a CPU."""


def assert_launcher_matches_serial(
    tmp_path: str | Path, *launcher_args: str
) -> subprocess.CompletedProcess[str]:
    """Run a two-seed sweep of :data:`TINY_SWEEP` with ``fewmask sweep`` twice, in
    subprocesses: serially into ``tmp_path/serial`` and with ``launcher_args`` (e.g.
    ``"--launcher", "ray", "-l", "local_cpus=2"``) into ``tmp_path/launched``. Asserts both
    exit 0, the launcher reports both runs finished, and the runs are the same
    (:func:`assert_same_runs`); returns the launched command's ``CompletedProcess``."""
    tmp_path = Path(tmp_path)
    config = tmp_path / "tiny_sweep.yaml"
    config.write_text(TINY_SWEEP)

    def sweep(out: str, *extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "fewmask.cli", "sweep", str(config)]
        command += ["--out", str(tmp_path / out), "-x", "seed=[1,2]", *extra]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(command)}\n{done.stderr}"
        return done

    sweep("serial")
    launched = sweep("launched", *launcher_args)
    assert "(2 finished, 0 failed, 0 running, 0 queued of 2)" in launched.stderr, launched.stderr
    assert assert_same_runs(tmp_path / "serial", tmp_path / "launched") == ["seed=1", "seed=2"]
    return launched
