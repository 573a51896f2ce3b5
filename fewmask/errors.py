"""Exceptions raised by fewmask. Every one names the field, path, component or package at fault."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest_name(name: str, choices: Iterable[str]) -> str | None:
    """The choice a typo of ``name`` most likely meant, or None when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return close[0] if close else None


class FewmaskError(Exception):
    """Base class of every error fewmask raises on purpose."""


class ConfigError(FewmaskError, ValueError):
    """One or more problems in a configuration, each as a line ``$.path: problem``."""

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s){where}:\n{lines}")


class UnknownComponentError(FewmaskError, LookupError):
    """A component name that no installed plugin registered."""


class DuplicateComponentError(FewmaskError):
    """Two providers registered the same component name."""


class PluginLoadError(FewmaskError, ImportError):
    """A plugin's entry point failed to import or register (raised in strict mode)."""


class CheckpointError(FewmaskError):
    """A checkpoint that is missing, truncated, corrupt or from an incompatible run."""


class DatasetError(FewmaskError):
    """A dataset that is missing, incomplete, corrupt or too small for the episodes asked for."""


class NonFiniteError(FewmaskError, FloatingPointError):
    """A NaN or Inf loss or gradient during meta-training."""
