"""Fetching one file over HTTP(S) into the user's folder: streamed, verified, atomic, or nothing.

A file is streamed to a hidden temporary file next to its destination
(``.<name>.<random>.part``) while its MD5 or SHA-256 is computed; a short read, a checksum
mismatch or a dropped connection removes that temporary file (it is fewmask's own) and raises a
:class:`~fewmask.errors.DownloadError` naming the URL and the removed file. Only a verified file
is renamed into place (``os.replace``) or unpacked. Archives are unpacked into a hidden
temporary folder first (members that would land outside it, links and devices are refused),
and only its complete top-level entries are moved into place.

Standard library only (``urllib``): no third-party downloader is needed or imported.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from fewmask.errors import DownloadError

CHUNK = 1 << 20
TIMEOUT_S = 60.0
USER_AGENT = "fewmask (dataset download)"


def describe_network_error(exc: BaseException) -> str:
    """A short reason for a failed request: 'connection refused', 'HTTP 404 Not Found', ..."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        if isinstance(reason, socket.gaierror):
            return f"host not found ({reason.strerror or reason})"
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return "timed out"
        return str(getattr(reason, "strerror", None) or reason)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection closed early"
    return f"{type(exc).__name__}: {exc}"


def checksum_of(path: Path, kind: str) -> str:
    """The hex digest (``md5`` or ``sha256``) of a file."""
    digest = hashlib.new(kind)
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def fetched(
    url: str,
    folder: Path,
    name: str,
    checksums: dict[str, str],
    dataset: str,
    timeout: float = TIMEOUT_S,
) -> Iterator[Path]:
    """Download ``url`` into a temporary file in ``folder``, verify it, and yield its path.

    ``checksums`` maps ``"md5"`` / ``"sha256"`` to the expected hex digests (all are checked).
    The temporary file is removed when the block ends, unless the caller moved it away
    (:func:`download_file` renames it into place). Network failures, short reads and checksum
    mismatches raise :class:`DownloadError`; local write failures stay ``OSError``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out:
            received, expected, digests = _stream(url, out, checksums, dataset, tmp, timeout)
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and received != expected:
            raise DownloadError(
                f"{dataset}: the download of {url} is truncated: {received:,} of {expected:,} "
                f"bytes arrived; removed the partial file {tmp}. Try again."
            )
        for kind, want in checksums.items():
            got = digests[kind].hexdigest()
            if got != want.lower():
                raise DownloadError(
                    f"{dataset}: checksum mismatch for {url}: {kind} {got}, expected {want} "
                    f"(a truncated, corrupt or different file); removed the download {tmp}. "
                    "Try again, or check the mirror."
                )
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _stream(
    url: str,
    out,
    checksums: dict[str, str],
    dataset: str,
    tmp: Path,
    timeout: float,
) -> tuple[int, int | None, dict]:
    """Copy the response body of ``url`` into ``out``; ``(bytes, Content-Length, digests)``."""
    digests = {kind: hashlib.new(kind) for kind in checksums}
    received = 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            size = f" ({expected / 1e6:,.1f} MB)" if expected else ""
            print(f"fewmask: downloading {url}{size}", file=sys.stderr, flush=True)
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                for digest in digests.values():
                    digest.update(chunk)
                received += len(chunk)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()  # it holds the response and its socket
        reason = describe_network_error(exc)
        after = f" after {received:,} bytes" if received else ""
        raise DownloadError(
            f"{dataset}: cannot download {url}: {reason}{after}"
            + (f"; removed the partial file {tmp}" if received else "")
        ) from None
    return received, expected, digests


def download_file(
    url: str, dest: Path, checksums: dict[str, str], dataset: str, timeout: float = TIMEOUT_S
) -> None:
    """Download ``url`` to ``dest``: verified, then renamed into place in one step."""
    with fetched(url, dest.parent, dest.name, checksums, dataset, timeout) as tmp:
        os.replace(tmp, dest)


def download_archive(
    url: str,
    folder: Path,
    name: str,
    creates: str,
    checksums: dict[str, str],
    dataset: str,
    timeout: float = TIMEOUT_S,
) -> None:
    """Download the archive ``url`` and unpack it into ``folder``; ``creates`` (a path relative
    to ``folder``) must come out of it. The archive itself is not kept."""
    with fetched(url, folder, name, checksums, dataset, timeout) as tmp:
        unpack(tmp, folder, name, creates, url, dataset, whole_stream=not checksums)


def unpack(
    archive: Path,
    folder: Path,
    name: str,
    creates: str,
    url: str,
    dataset: str,
    whole_stream: bool = False,
) -> None:
    """Unpack ``archive`` (tar, tar.gz or zip, by ``name``) into ``folder`` through a temporary
    folder; top-level entries already in ``folder`` are left as they are.

    ``whole_stream`` (for an archive without a pinned checksum) first reads a gzip stream to
    its end, which checks its CRC-32 and length: tarfile stops at the end-of-archive blocks and
    would miss a cut or corrupt tail.
    """
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=f".{name}.", suffix=".unpacking"))
    try:
        try:
            if name.endswith(".zip"):
                _unzip(archive, staging)
            else:
                if whole_stream and name.endswith(("gz", ".tgz")):
                    _read_gzip(archive)
                _untar(archive, staging)
        except (
            tarfile.TarError,
            zipfile.BadZipFile,
            gzip.BadGzipFile,
            EOFError,
            zlib.error,
            ValueError,
        ) as exc:
            raise DownloadError(
                f"{dataset}: the archive from {url} is truncated or corrupt ({exc}); removed it "
                f"and the partly unpacked folder {staging}. Try again."
            ) from None
        except UnsafeMember as exc:
            raise DownloadError(
                f"{dataset}: refused the archive from {url}: {exc}; removed it and {staging}"
            ) from None
        if not (staging / creates).exists():
            found = ", ".join(sorted(p.name for p in staging.iterdir())[:5]) or "nothing"
            raise DownloadError(
                f"{dataset}: the archive from {url} holds no {creates} (it holds {found}); "
                f"removed it. Is the mirror serving the right file?"
            )
        for entry in sorted(staging.iterdir()):
            target = folder / entry.name
            if not target.exists():
                try:
                    os.replace(entry, target)  # same file system: one atomic rename per entry
                except OSError:
                    if not target.exists():
                        raise
                    # another process (a torchrun rank) unpacked the same archive first
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class UnsafeMember(Exception):
    """An archive member that would be written outside the target folder (or is a link or a
    device)."""


def _check_name(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or "\0" in name:
        raise UnsafeMember(f"member {name!r} points outside the folder")


def _read_gzip(archive: Path) -> None:
    """Decompress a gzip file to its end (raises on a bad CRC-32, length or truncation)."""
    with gzip.open(archive, "rb") as stream:
        while stream.read(CHUNK):
            pass


def _untar(archive: Path, into: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = []
        for member in tar:  # reads the whole stream: a truncated gzip fails here
            _check_name(member.name)
            if not (member.isfile() or member.isdir()):
                raise UnsafeMember(f"member {member.name!r} is a link or a special file")
            members.append(member)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.10.12 / 3.11.4
            tar.extractall(into, members=members)


def _unzip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as opened:
        for info in opened.infolist():
            _check_name(info.filename)
        bad = opened.testzip()  # CRC of every member
        if bad is not None:
            raise zipfile.BadZipFile(f"bad CRC in member {bad}")
        opened.extractall(into)
