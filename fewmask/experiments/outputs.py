"""What an experiment wrote into its output folder, so that ``--force`` removes that and only that.

Every file and run folder an :class:`~fewmask.experiments.common.Experiment` writes is listed in
``OUT/.fewmask-experiment.json`` as it is written. ``--force`` (:func:`discard_outputs`) removes
the listed files, the files of the listed run folders that fewmask itself names
(:meth:`fewmask.runtime.folder.RunFolder.discard_all`) and the listing, then the folders left
empty. Any other file (your notes, your code) stays; a folder without the listing is refused whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from fewmask.errors import ConfigError
from fewmask.runtime.folder import RunFolder

MANIFEST = ".fewmask-experiment.json"
RUNS = "runs"


def record(out: Path, name: str, paths: Iterable[Path]) -> None:
    """Add ``paths`` (inside ``out``) to the listing of experiment ``name``'s outputs."""
    manifest = out / MANIFEST
    listed = read_manifest(out) or {"experiment": name, "outputs": []}
    outputs = list(listed.get("outputs", []))
    for path in paths:
        relative = Path(path).resolve().relative_to(out.resolve()).as_posix()
        if relative not in outputs:
            outputs.append(relative)
    out.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({**listed, "outputs": outputs}, indent=2) + "\n")


def read_manifest(out: Path) -> dict | None:
    """The listing, or None if ``out`` has none (or an unreadable one)."""
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("outputs"), list) else None


def written(out: Path) -> list[Path]:
    """The files an experiment listed as its own in ``out`` that are still there, in the order
    written (never a file someone else put in the folder)."""
    listed = read_manifest(out) or {"outputs": []}
    paths = [_inside(out, entry) for entry in listed["outputs"]]
    return [p for p in paths if p is not None and p.is_file() and not p.is_symlink()]


def discard_outputs(out: Path) -> list[str]:
    """Remove what fewmask wrote in ``out`` (nothing else); returns what was removed.

    A folder that holds files but no listing was not written by ``fewmask experiment`` (or by
    a version before the listing): a ConfigError, and nothing is touched."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise ConfigError([f"--force: {out} is a file, not an experiment's output folder"])
    listed = read_manifest(out)
    if listed is None:
        if any(out.iterdir()):
            raise ConfigError(
                [
                    f"--force: {out} holds files but no {MANIFEST}, so fewmask did not write it "
                    "(or an older fewmask did); nothing was removed. Remove what you want gone "
                    "yourself, or choose another --out"
                ]
            )
        return []
    entries = [_inside(out, entry) for entry in listed["outputs"]]
    runs = [path for path in entries if path is not None and path.parent.name == RUNS]
    for path in runs:  # refuse before removing anything if a run is being written
        if path.is_dir():
            with RunFolder(path).locked():
                pass
    removed = []
    for path in [*(p for p in entries if p not in runs), *runs]:  # run folders emptied last
        if path is None or not path.exists():
            continue
        if path in runs and path.is_dir():
            removed += [str(p) for p in RunFolder(path).discard_all()]
        elif path.is_dir():
            for event in path.glob("events.out.tfevents.*"):
                event.unlink()
                removed.append(str(event))
            _remove_if_empty(path)
        else:
            path.unlink()
            removed.append(str(path))
    (out / MANIFEST).unlink(missing_ok=True)
    _remove_if_empty(out / RUNS)
    return removed


def _inside(out: Path, entry: object) -> Path | None:
    """``out / entry`` for a relative path without ``..`` (a tampered listing cannot point
    outside the folder)."""
    if not isinstance(entry, str) or not entry:
        return None
    relative = PurePosixPath(entry)
    if relative.is_absolute() or ".." in relative.parts:
        return None
    return out / Path(*relative.parts)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (someone else's files), or gone
        pass
