"""Config structuring, validation (all problems at once), overrides, file formats, round-trips."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fewmask import ConfigError, load_config
from fewmask import resolve as resolve_config
from fewmask.config import ExperimentConfig, TrainConfig, apply_overrides, parse_experiment
from fewmask.config.resolve import plain_config
from fewmask.options import converter

BASE = {"backbone": {"name": "omniglot_mlp"}}


def problems(data) -> list[str]:
    with pytest.raises(ConfigError) as info:
        resolve_config(data)
    return info.value.problems


def test_minimal_config_resolves_with_defaults():
    resolved = resolve_config(BASE)
    assert resolved.experiment.train == TrainConfig()
    assert resolved.components["masker"].name == "dense"  # maml's default masker
    mt = resolve_config({**BASE, "objective": {"name": "metaticket"}})
    assert mt.components["masker"].name == "metaticket"
    assert mt.components["objective"].options.lr == 10.0


def test_an_unknown_key_with_no_close_match_lists_the_valid_ones():
    found = problems({**BASE, "masker": {"name": "metaticket", "options": {"zzz": 1}}})
    assert found == [
        "$.masker.options: unknown key(s): zzz; valid: init_sparsity, weight_init, exclude_head"
    ]


def test_every_problem_is_reported_at_once_with_paths():
    found = problems(
        {
            "backbone": {"name": "omniglot_mpl", "options": {"width": "wide"}},
            "masker": {"name": "metaticket", "options": {"init_sparsty": 0.5}},
            "inner": {"name": "sgd", "options": {"lr": -1, "steps": 1.5}},
            "train": {"iterations": 0, "dtype": "float16", "itterations": 3},
            "sedd": 3,
        }
    )
    text = "\n".join(found)
    assert "$.backbone.name: no backbone named 'omniglot_mpl'. Did you mean 'omniglot_mlp'" in text
    assert "$.masker.options: unknown key(s): init_sparsty (did you mean 'init_sparsity'?)" in text
    assert "$.train: unknown key(s): itterations (did you mean 'iterations'?)" in text
    assert "$: unknown key(s): sedd (did you mean 'seed'?)" in text
    assert len(found) == 5  # phase 2 runs even though phase 1 failed
    found = problems(
        {
            **BASE,
            "inner": {"name": "sgd", "options": {"lr": -1, "steps": 1}},
            "sampler": {"name": "episodic", "options": {"shots": 1.5}},
            "train": {"iterations": 0},
        }
    )
    text = "\n".join(found)
    assert "$.train.iterations: must be >= 1, got 0" in text
    assert "$.inner.options.lr: must be >= 0, got -1" in text
    assert "$.sampler.options.shots: expected an integer, got float 1.5" in text


@pytest.mark.parametrize(
    "value, message",
    [
        ("3", "expected an integer, got str"),
        (True, "expected an integer, got a boolean"),
        (None, "expected an integer"),
    ],
)
def test_no_silent_type_coercion(value, message):
    assert any(message in p for p in problems({**BASE, "train": {"iterations": value}}))


def test_options_must_be_a_mapping_and_optionless_components_reject_options():
    assert any(
        "expected a mapping of options" in p
        for p in problems({**BASE, "sampler": {"name": "episodic", "options": [1]}})
    )
    assert any(
        "masker 'dense' takes no options" in p
        for p in problems({**BASE, "masker": {"name": "dense", "options": {"x": 1}}})
    )


def test_overrides_and_yaml_scientific_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("backbone: {name: omniglot_mlp}\ninner: {name: sgd, options: {lr: 1e-3}}\n")
    resolved = load_config(
        path, ["train.iterations=7", "inner.options.steps=2", "objective.name=metaticket"]
    )
    assert resolved.components["inner"].options.lr == 1e-3
    assert resolved.experiment.train.iterations == 7
    assert resolved.components["objective"].name == "metaticket"
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.iterations"])


def test_toml_and_missing_or_broken_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('seed = 3\n[backbone]\nname = "mlp5"\n[backbone.options]\nwidth = 0.5\n')
    assert load_config(toml).components["backbone"].options.width == 0.5
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse bad.yaml"):
        load_config(bad)


refs = st.builds(dict, name=st.sampled_from(["omniglot_mlp", "mlp5"]))
train_configs = st.builds(
    TrainConfig,
    iterations=st.integers(1, 10**6),
    meta_batch_size=st.integers(1, 64),
    val_every=st.integers(1, 1000),
    val_episodes=st.integers(0, 1000),
    dtype=st.sampled_from(["float32", "float64"]),
    progress=st.booleans(),
)


@given(train=train_configs, seed=st.integers(0, 2**31), width=st.floats(0.1, 8))
def test_round_trip_through_plain_data(train, seed, width):
    data = {
        "backbone": {"name": "mlp5", "options": {"width": width}},
        "train": converter.unstructure(train),
        "seed": seed,
    }
    experiment = parse_experiment(data)
    again = parse_experiment(plain_config(experiment))
    assert again == experiment
    resolved = resolve_config(experiment)
    assert resolve_config(plain_config(resolved)).components["backbone"].options.width == width
    assert attrs.evolve(experiment) == experiment


def test_experiment_config_fields_all_have_help():
    for cls in (ExperimentConfig, TrainConfig):
        for field in attrs.fields(cls):
            assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help"


def test_masker_options_without_a_name_go_to_the_objectives_masker():
    resolved = resolve_config(
        apply_overrides(
            {**BASE, "objective": {"name": "metaticket"}}, ["masker.options.init_sparsity=0.5"]
        )
    )
    masker = resolved.components["masker"]
    assert masker.name == "metaticket" and masker.options.init_sparsity == 0.5
    assert any(
        "masker 'dense' takes no options" in p
        for p in problems(apply_overrides(BASE, ["masker.options.init_sparsity=0.5"]))
    )


def test_create_accepts_the_config_field_or_the_registry_kind():
    from fewmask import create
    from fewmask.builtins.inner import SGDInner

    assert isinstance(create("inner", "sgd"), SGDInner)
    assert isinstance(create("inner_optimizer", "sgd", {"lr": 0.1}), SGDInner)
    with pytest.raises(ConfigError, match="unknown component kind 'inners'; kinds: backbone"):
        create("inners", "sgd")


def test_the_options_reference_renders_types_as_written():
    """docs/config.md must not depend on how the interpreter prints types (3.10 vs 3.11)."""
    from fewmask.config import fields_markdown

    table = fields_markdown(ExperimentConfig)
    assert "| `masker` | `ComponentRef \\| None` | `None` |" in table
    assert "| `train` | `TrainConfig` | (section `train`) |" in table


def test_a_component_may_be_given_by_name_alone():
    resolved = resolve_config(
        {"backbone": "omniglot_mlp", "objective": "metaticket", "masker": "iterand"}
    )
    assert resolved.components["backbone"].name == "omniglot_mlp"
    assert resolved.components["masker"].nested["base"].name == "metaticket"
    assert problems({"backbone": 3}) == [
        "$.backbone: expected a component name or {name: ..., options: {...}}, got int 3"
    ]
    assert problems({"backbone": "omniglot_mpl"})[0].startswith(
        "$.backbone.name: no backbone named 'omniglot_mpl'. Did you mean 'omniglot_mlp'?"
    )


def test_the_options_reference_is_the_same_after_types_are_resolved():
    """cattrs resolves a class's annotations in place; the reference must not change (on
    Python 3.10 a resolved `X | None` prints as `Optional[X]`)."""
    from fewmask.config import fields_markdown

    before = fields_markdown(ExperimentConfig)
    attrs.resolve_types(ExperimentConfig)
    assert fields_markdown(ExperimentConfig) == before
