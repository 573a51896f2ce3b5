"""The ``fewmask`` command (:func:`main`); its commands are in :mod:`.commands`, the rendering
of failures as messages and exit statuses in :mod:`.errors`."""

from fewmask.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
