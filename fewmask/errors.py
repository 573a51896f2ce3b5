"""Exceptions raised by fewmask. Every one names the field, path, component or package at fault.

``exit_code`` is the status the ``fewmask`` command exits with: 2 for bad input (a config, an
argument, a missing or malformed dataset at the path given, a run folder that cannot be used, a
run too large for the machine), 1 for a failure at run time (checkpoint, plugin, non-finite
values).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest_name(name: str, choices: Iterable[str]) -> str | None:
    """The choice a typo of ``name`` most likely meant, or None when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return close[0] if close else None


class FewmaskWarning(UserWarning):
    """Something fewmask worked around but you should know about (a fallback checkpoint, a
    stale lock taken over, a diverging run)."""


class FewmaskError(Exception):
    """Base class of every error fewmask raises on purpose."""

    exit_code: int = 1


class ConfigError(FewmaskError, ValueError):
    """One or more problems in a configuration, each as a line ``$.path: problem``."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        shown = [_shortened(p) for p in self.problems[:MAX_PROBLEMS_SHOWN]]
        if len(self.problems) > MAX_PROBLEMS_SHOWN:
            shown.append(f"... and {len(self.problems) - MAX_PROBLEMS_SHOWN:,} more problem(s)")
        lines = "\n".join(f"  {p}" for p in shown)
        super().__init__(f"{len(self.problems)} problem(s){where}:\n{lines}")


MAX_PROBLEMS_SHOWN = 30
"""Problems a ConfigError prints; the rest are counted (all stay in ``problems``)."""
MAX_PROBLEM_CHARS = 2000
"""Characters a problem line prints at most (a value may be long)."""


def _shortened(problem: str) -> str:
    if len(problem) <= MAX_PROBLEM_CHARS:
        return problem
    return (
        f"{problem[:MAX_PROBLEM_CHARS]}... ({len(problem) - MAX_PROBLEM_CHARS:,} more characters)"
    )


class UnknownComponentError(FewmaskError, LookupError):
    """A component name that no installed plugin registered."""

    exit_code = 2


class DuplicateComponentError(FewmaskError):
    """Two providers registered the same component name."""


class PluginLoadError(FewmaskError, ImportError):
    """A plugin's entry point failed to import or register (raised in strict mode)."""


class CheckpointError(FewmaskError):
    """A checkpoint that is missing, truncated, corrupt, tampered with or from an incompatible
    run."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint that could not be written (full disk, no permission); the previous one is
    kept."""


class DatasetError(FewmaskError):
    """A dataset that is missing, incomplete, corrupt or too small for the episodes asked for."""

    exit_code = 2  # the data the user pointed at: bad input, like a config


class DownloadError(DatasetError):
    """A dataset download (``download: true``) that failed: no network, an HTTP error, a
    truncated file or a checksum mismatch. The message names the URL, the partial file fewmask
    removed, and the layout to place the files in by hand."""


class NonFiniteError(FewmaskError, FloatingPointError):
    """A NaN or Inf loss, gradient or meta-parameter during meta-training."""


class GraphCaptureError(FewmaskError, RuntimeError):
    """``train.cuda_graph``: the meta-step could not be captured into a CUDA graph."""


class RunFolderError(FewmaskError):
    """A run folder that cannot be written or read (permissions, a file in the way)."""


class RunLockedError(RunFolderError):
    """A run folder in use by another ``fewmask`` process (its lock file names the owner)."""

    exit_code = 2


class RunFileError(RunFolderError):
    """A file in a run folder that fewmask will not write: a symbolic or hard link, a FIFO, a
    folder where a file of the run belongs (someone else's file, left untouched)."""

    exit_code = 2


class RunStoppedError(RunFolderError):
    """A run that stopped on a non-finite value, asked for results as if it had finished."""


class ResourceError(FewmaskError):
    """A run whose estimated memory exceeds what the device has (refused before allocating)."""

    exit_code = 2


class ExportError(FewmaskError):
    """An export that cannot be written or loaded as asked: a file that is truncated, tampered
    with or regenerates another network (another torch version or device), a format the run
    does not support, a missing optional library, or a user's image folder that cannot be
    used."""

    exit_code = 2  # the file or folder the user pointed at: bad input


class JobsFailedError(FewmaskError):
    """Some of an experiment's runs failed; the others finished and the tables were written
    with the failed runs' rows marked missing. The message names each with its log's tail."""
