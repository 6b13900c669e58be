"""Download, verify and extract LibriSpeech (openslr.org resource 12).

Usage::

    python -m utils.download_librispeech DEST [-e EXTRACT_DIR] [--subsets dev-clean ...]
        [--skip_download] [--skip_checksum] [--skip_extract] [--base_url URL] [--md5 NAME=HEX]

For every subset ``<DEST>/<subset>.tar.gz`` is downloaded (skipped when present; an interrupted
download left as ``.tar.gz.tmp`` is resumed), its MD5 sum is checked against the published value
(a mismatch is an ERROR: the file is renamed to ``.tar.gz.bad`` so that a rerun downloads it again,
and the tool exits with status 1) and the tarball is extracted into EXTRACT_DIR (default DEST),
giving ``<EXTRACT_DIR>/LibriSpeech/<subset>/...``. Extraction writes a marker
``.<subset>.tar.gz.extracted`` in EXTRACT_DIR and is skipped on later runs; a subset with that marker whose
tarball was deleted (to free disk) is not downloaded again (unless ``--skip_extract`` asks for tarballs). Every stage reports
progress on stderr as whole lines with rate and ETA (download and MD5 check: MiB; extraction: MiB of the
archive listed, then members extracted; hashing and extraction every ``--progress_interval`` seconds, the
download every 10 s); ``--quiet`` turns it off.

``--base_url`` replaces ``https://www.openslr.org/resources/12`` (a mirror, a local directory or a
``file://`` URL); ``--md5 NAME=HEX`` adds or overrides a checksum (used by the tests).
"""
from __future__ import annotations

import argparse
import os
import sys

from .common import DataToolError, run_main
from .download_utils import PROGRESS_INTERVAL_S, download_file, extract, join_url, md5sum

DEFAULT_BASE_URL = "https://www.openslr.org/resources/12"

LIBRISPEECH_MD5 = {
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500": "d1a0fd59409feb2c614ce4d30c387708",
}

DEFAULT_SUBSETS = ["train-clean-100", "train-clean-360", "train-other-500",
                   "dev-clean", "dev-other", "test-clean", "test-other"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m utils.download_librispeech",
                                description="Download, verify (MD5) and extract LibriSpeech tarballs.")
    p.add_argument("dest", metavar="DEST", help="directory for the .tar.gz files")
    p.add_argument("-e", "--extract_dir", default=None, help="extraction directory (default: DEST)")
    p.add_argument("--skip_download", action="store_true", help="do not download")
    p.add_argument("--skip_checksum", action="store_true", help="do not verify MD5 sums")
    p.add_argument("--skip_extract", action="store_true", help="do not extract")
    p.add_argument("--subsets", nargs="+", default=DEFAULT_SUBSETS, metavar="SUBSET",
                   help="subsets to fetch (default: the 7 LibriSpeech subsets)")
    p.add_argument("--base_url", default=DEFAULT_BASE_URL,
                   help="where <subset>.tar.gz files are served: http(s):// or file:// URL or a local "
                        f"directory (default: {DEFAULT_BASE_URL})")
    p.add_argument("--md5", action="append", default=[], metavar="NAME=HEX",
                   help="add/override the expected MD5 of subset NAME (repeatable)")
    p.add_argument("--no_resume", action="store_true", help="discard partial .tmp downloads")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--progress_interval", type=float, default=PROGRESS_INTERVAL_S, metavar="SECONDS",
                   help="seconds between progress lines of the MD5 check and the extraction "
                        f"(default {PROGRESS_INTERVAL_S:g})")
    return p.parse_args(argv)


def expected_md5(args: argparse.Namespace) -> dict:
    sums = dict(LIBRISPEECH_MD5)
    for item in args.md5:
        name, sep, value = item.partition("=")
        value = value.strip().lower()
        if not sep or not name or len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
            raise DataToolError(f"--md5 {item!r}: expected NAME=<32 hex digits>")
        sums[name] = value
    return sums


def verify(path: str, subset: str, sums: dict, *, progress: bool = False,
           interval_s: float = PROGRESS_INTERVAL_S) -> None:
    """Check the MD5 of ``path``; on mismatch rename it to ``.bad`` and raise."""
    if subset not in sums:
        raise DataToolError(f"no known MD5 sum for subset {subset!r}; pass --md5 {subset}=HEX "
                            "or --skip_checksum")
    print(f"Verifying {path} ...", file=sys.stderr)
    actual = md5sum(path, progress=progress, interval_s=interval_s)
    if actual != sums[subset]:
        bad = path + ".bad"
        os.replace(path, bad)
        raise DataToolError(f"MD5 mismatch for {path}: expected {sums[subset]}, got {actual}; "
                            f"the file was moved to {bad}; rerun to download it again")
    print(f"{path}: MD5 Passed", file=sys.stderr)


def make_dir(path: str, what: str) -> None:
    """``os.makedirs(path)``; an error (not a traceback) when it cannot be created, e.g. the default /datasets/
    without write permission."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise DataToolError(f"cannot create the {what} {path}: {exc.strerror or exc}") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    sums = expected_md5(args)
    extract_dir = args.extract_dir or args.dest
    make_dir(args.dest, "download directory")
    if not args.skip_extract:
        make_dir(extract_dir, "extraction directory")
    for subset in args.subsets:
        fname = f"{subset}.tar.gz"
        path = os.path.join(args.dest, fname)
        marker = os.path.join(extract_dir, f".{fname}.extracted")
        if not args.skip_extract and os.path.exists(marker) and not os.path.exists(path):
            # extracted by an earlier run whose tarball was deleted since (to free disk): nothing to do
            print(f"{subset} already extracted into {extract_dir} (marker {marker}; {path} is gone), skipping",
                  file=sys.stderr)
            continue
        if not args.skip_download:
            if args.no_resume and os.path.exists(path + ".tmp"):
                os.remove(path + ".tmp")
            download_file(join_url(args.base_url, fname), path, progress=not args.quiet)
        if not os.path.exists(path):
            if args.skip_download:
                raise DataToolError(f"{path} does not exist (--skip_download given)")
            raise DataToolError(f"{path} missing after download")
        if not args.skip_checksum:
            verify(path, subset, sums, progress=not args.quiet, interval_s=args.progress_interval)
        if not args.skip_extract:
            if os.path.exists(marker):
                print(f"{path} already extracted into {extract_dir} (marker {marker}), skipping",
                      file=sys.stderr)
                continue
            print(f"Extracting {path} into {extract_dir} ...", file=sys.stderr)
            extract(path, extract_dir, progress=not args.quiet, interval_s=args.progress_interval)
            with open(marker, "w", encoding="utf-8") as f:
                f.write(f"{fname}\n")
    print("Done.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
