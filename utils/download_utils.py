"""Download, checksum and extraction helpers (standard library only: urllib, hashlib, tarfile).

* :func:`download_file` streams a URL (``http(s)://``, ``file://`` or a plain local path) to ``dest``
  through ``dest + ".tmp"`` and a final rename. A leftover ``.tmp`` from an interrupted run is resumed:
  with an HTTP ``Range`` request (falling back to a full download when the server ignores it), or by
  seeking for local files. A progress line with size, rate and ETA is printed to stderr.
* :func:`md5sum` hashes a file in 1 MiB chunks (with ``progress=True``: MiB hashed, rate and ETA).
* :func:`extract` unpacks ``.tar.gz``/``.tgz``/``.tar`` archives, refusing members that would land
  outside the destination (with ``progress=True``: MiB of the archive read while listing its members,
  then members extracted, each with rate and ETA).

Progress for hashing and extraction goes through :class:`common.progress.Progress`: whole lines on
stderr at most every ``interval_s`` seconds (so they also show in logs, where stderr is no terminal).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request

from common.progress import Progress

from .common import DataToolError

CHUNK_SIZE = 1 << 20  # 1 MiB, as the reference
MIB = 1 << 20
PROGRESS_INTERVAL_S = 10.0  # seconds between progress lines of downloads, hashing and extraction


def _byte_progress(desc: str, total, initial: int, enabled: bool, interval_s: float = PROGRESS_INTERVAL_S) -> Progress:
    """Progress over bytes, shown in MiB."""
    return Progress(total=total, desc=desc, unit="MiB", scale=MIB, initial=initial, interval_s=interval_s,
                    enabled=enabled)




def _local_path(url: str) -> str | None:
    """The filesystem path for a ``file://`` URL or a plain path; None for network URLs."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return urllib.request.url2pathname(parsed.path)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return url
    return None


def join_url(base: str, name: str) -> str:
    """``base`` + ``/`` + ``name`` for URLs and local directories alike."""
    return base.rstrip("/") + "/" + name


def download_file(url: str, dest: str, *, resume: bool = True, progress: bool = True,
                  chunk_size: int = CHUNK_SIZE, timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` (skipped when ``dest`` exists); return ``dest``.

    Data goes to ``dest + ".tmp"`` first; an existing ``.tmp`` is continued when ``resume`` is true.
    Raises :class:`DataToolError` on any failure (the ``.tmp`` is kept so that a rerun resumes).
    """
    if os.path.exists(dest):
        print(f"{dest} exists, skipping download", file=sys.stderr)
        return dest
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = dest + ".tmp"
    offset = os.path.getsize(tmp) if (resume and os.path.exists(tmp)) else 0
    name = os.path.basename(dest)
    local = _local_path(url)
    try:
        if local is not None:
            _copy_local(local, tmp, offset, name, progress, chunk_size)
        else:
            _download_http(url, tmp, offset, name, progress, chunk_size, timeout)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        # HTTPException: e.g. IncompleteRead when a chunked transfer is cut; a refusal (HTTP 404) leaves no data
        kept = os.path.isfile(tmp) and os.path.getsize(tmp) > 0
        hint = f"; partial data kept in {tmp}, rerun to resume" if kept else ""
        raise DataToolError(f"download of {url} failed: {exc or type(exc).__name__}{hint}") from None
    os.replace(tmp, dest)
    return dest


def _copy_local(src: str, tmp: str, offset: int, name: str, progress: bool, chunk_size: int) -> None:
    if not os.path.isfile(src):
        raise DataToolError(f"source file {src} does not exist")
    total = os.path.getsize(src)
    if offset > total:
        offset = 0  # stale .tmp longer than the source: start again
    if offset:
        print(f"resuming {name} at byte {offset}", file=sys.stderr)
    prog = _byte_progress(name, total, offset, progress)
    with open(src, "rb") as fin, open(tmp, "r+b" if offset else "wb") as fout:
        fin.seek(offset)
        fout.seek(offset)
        fout.truncate()
        _stream(fin, fout, offset, prog, chunk_size)
    prog.close()


def _stream(fin, fout, done: int, prog: Progress, chunk_size: int) -> int:
    """Copy ``fin`` to ``fout`` in chunks, reporting progress; returns the byte count reached."""
    while True:
        chunk = fin.read(chunk_size)
        if not chunk:
            return done
        fout.write(chunk)
        done += len(chunk)
        prog.update_to(done)


def _download_http(url: str, tmp: str, offset: int, name: str, progress: bool, chunk_size: int,
                   timeout: float) -> None:
    headers = {"User-Agent": "wav2vec2-trainer-data-tools"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range not satisfiable: the partial file already holds everything (checked by MD5 later).
            print(f"{name}: server reports the partial download is complete", file=sys.stderr)
            return
        raise
    with response:
        status = getattr(response, "status", 200)
        length = response.headers.get("Content-Length")
        if offset and status == 206:
            print(f"resuming {name} at byte {offset}", file=sys.stderr)
            mode = "ab"
            total = offset + int(length) if length is not None else None
        else:
            if offset:
                print(f"{name}: server ignored the range request, restarting", file=sys.stderr)
            offset = 0
            mode = "wb"
            total = int(length) if length is not None else None
        prog = _byte_progress(name, total, offset, progress)
        with open(tmp, mode) as fout:
            done = _stream(response, fout, offset, prog, chunk_size)
        prog.close()
    if total is not None and done != total:
        raise DataToolError(f"download of {url} ended early ({done} of {total} bytes); "
                            f"partial data kept in {tmp}, rerun to resume")


def md5sum(path: str, chunk_size: int = CHUNK_SIZE, *, progress: bool = False,
           interval_s: float = PROGRESS_INTERVAL_S) -> str:
    """Hex MD5 digest of a file; with ``progress``, a line of MiB hashed, rate and ETA every ``interval_s``."""
    digest = hashlib.md5()
    prog = _byte_progress(f"verifying {os.path.basename(path)}", os.path.getsize(path), 0, progress, interval_s)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
            prog.update(len(chunk))
    prog.close()
    return digest.hexdigest()


def _check_member(member: tarfile.TarInfo, dest_real: str, archive: str) -> None:
    target = os.path.realpath(os.path.join(dest_real, member.name))
    if target != dest_real and not target.startswith(dest_real + os.sep):
        raise DataToolError(f"{archive}: member {member.name!r} would be extracted outside {dest_real}")
    if member.issym() or member.islnk():
        raise DataToolError(f"{archive}: link member {member.name!r} refused")


def _counted(members, prog: Progress):
    """Yield ``members``, counting each one in ``prog`` once it has been extracted (when the next is asked for)."""
    for member in members:
        yield member
        prog.update()


def extract(archive: str, dest: str, *, progress: bool = False, interval_s: float = PROGRESS_INTERVAL_S) -> None:
    """Extract a ``.tar.gz``/``.tgz``/``.tar`` archive into ``dest`` safely.

    Every member is checked before anything is written. That first pass decompresses the whole archive, so
    with ``progress`` it reports MiB of the (compressed) archive read, then the extraction reports members.
    """
    if not (archive.endswith((".tar.gz", ".tgz", ".tar"))):
        raise DataToolError(f"{archive}: unsupported archive type (expected .tar.gz, .tgz or .tar)")
    name = os.path.basename(archive)
    try:
        os.makedirs(dest, exist_ok=True)
        dest_real = os.path.realpath(dest)
        with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
            size = os.path.getsize(archive)
            scan = _byte_progress(f"listing {name}", size, 0, progress, interval_s)
            members = []
            for m in tar:  # reads the archive once: the position in the compressed file measures progress
                _check_member(m, dest_real, archive)
                members.append(m)
                scan.update_to(min(raw.tell(), size - 1))  # 100% only once all are listed
            scan.update_to(size)
            scan.close()
            prog = Progress(total=len(members), desc=f"extracting {name}", unit="members",
                            interval_s=interval_s, enabled=progress)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=_counted(members, prog), filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                tar.extractall(dest, members=_counted(members, prog))
            prog.close()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataToolError(f"{archive}: extraction failed: {exc}") from None


__all__ = ["download_file", "md5sum", "extract", "join_url", "CHUNK_SIZE", "PROGRESS_INTERVAL_S"]
