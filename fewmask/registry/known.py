"""The first-party plugin distributions and the names they register, so that an unknown name
says what to install (a leaf module: the core never imports a plugin, it only knows its name).
"""

from __future__ import annotations

import importlib.metadata

PROVIDERS: dict[tuple[str, str], str] = {
    ("masker", "metaticket"): "fewmask-plugin-metaticket",
    ("objective", "metaticket"): "fewmask-plugin-metaticket",
    ("masker", "iterand"): "fewmask-plugin-iterand",
    ("inner_optimizer", "anil"): "fewmask-plugin-lrpolicies",
    ("inner_optimizer", "boil"): "fewmask-plugin-lrpolicies",
    ("inner_optimizer", "per_layer"): "fewmask-plugin-lrpolicies",
    ("backbone", "timm"): "fewmask-plugin-timm",
    ("backbone", "torchvision"): "fewmask-plugin-torchvision",
    ("launcher", "submitit"): "fewmask-plugin-submitit",
    ("launcher", "ray"): "fewmask-plugin-ray",
}
"""``(kind, name) -> distribution`` of every component the plugins of this repository register
(a test checks it against their registrations)."""

OUTSIDE_PLUGINS_EXTRA: dict[str, str] = {
    "fewmask-plugin-timm": "timm",
    "fewmask-plugin-torchvision": "torchvision",
    "fewmask-plugin-submitit": "submitit",
    "fewmask-plugin-ray": "ray",
}
"""Plugins that need a third-party library (named here), so ``fewmask[plugins]`` leaves them
out and only ``fewmask[all]`` brings them."""


def install_hint(kind: str, name: str) -> str | None:
    """What to do about a missing first-party component, or ``None`` for any other name."""
    distribution = PROVIDERS.get((kind, name))
    if distribution is None:
        return None
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        library = OUTSIDE_PLUGINS_EXTRA.get(distribution)
        if library is not None:
            return (
                f"It is provided by {distribution}: pip install {distribution} (it brings "
                f"{library}; 'fewmask[plugins]' does not include it, 'fewmask[all]' does)."
            )
        return (
            f"It is provided by {distribution}: pip install {distribution} "
            "(or every plugin: pip install 'fewmask[plugins]')."
        )
    return (
        f"It is provided by {distribution}, which is installed but was not loaded: check "
        "FEWMASK_DISABLE_PLUGIN_AUTOLOAD, FEWMASK_LOAD_PLUGINS and FEWMASK_DISABLE_PLUGINS."
    )
