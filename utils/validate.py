"""Check a data set against a training configuration before training starts.

Usage::

    python -m utils.validate --data DIR --subset train [--labels ltr|none] [--dict DIR/dict.ltr.txt]
        [--min-sample-size N] [--max-sample-size N] [--max-tokens N] [--pad | --no-pad]
        [--preset pretrain-base|pretrain-large] [--sample-rate 16000] [--decode] [--json OUT]
        [--quiet] [--progress-interval SECONDS] [--conv-feature-layers SPEC]

Mirrors the trainer's filtering (see docs/DATA_TOOLS.md): an entry whose manifest size is below
``min_sample_size`` is skipped; one too short for the model (fewer samples than the feature extractor's
input for one frame, two without labels as pretraining's negatives need, computed from ``--conv-feature-layers``:
400 or 720 for the wav2vec 2.0 extractor) is skipped; its token count (its size, capped at ``max_sample_size`` when padding is off) must not exceed
``max_tokens`` or it is skipped; kept entries longer than ``max_sample_size`` are cropped when batched.
In addition every audio file is opened (header only, or fully decoded with ``--decode``) and reported
unreadable when missing, corrupt, truncated (a WAV shorter than its header declares: caught even when the
manifest was written after the truncation; a FLAC or other compressed file whose last frame cannot be
decoded), at another sample rate or multi-channel; manifest sizes that disagree with the file are
reported; the label file must have one line per manifest entry and a non-empty transcript for every
entry the trainer reads; the dictionary is parsed by the trainer's own parser; label symbols absent from
the dictionary are listed with the file and line of their first occurrence; transcripts longer than CTC
can align in their audio's frames are warned about. Files checked, rate and ETA go to stderr every
``--progress-interval`` seconds (``--quiet``: none); the report goes to stdout.

Exit status 0 when the data set is usable (the report ends ``RESULT: OK``, or lists ``warnings:`` and
ends ``RESULT: OK, with N warning(s) (listed above)``), 1 when the kept set is empty, labels and manifest
disagree, a transcript the trainer reads is empty, files are unreadable or symbols are missing from the
dictionary (2 for usage errors).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field

import soundfile as sf

from common.progress import Progress

from .common import DataToolError, read_lines, read_manifest, run_main
from .generate_filelist import WAV_FORMATS, check_decodes_to_end, wav_header_tools

# Reference recipe values (pretrain_base.sh / pretrain_large.sh): pre-training crops (pad off).
PRESETS = {
    "pretrain-base": dict(min_sample_size=32000, max_sample_size=250000, max_tokens=1400000, pad=False),
    "pretrain-large": dict(min_sample_size=32000, max_sample_size=320000, max_tokens=1200000, pad=False),
}

EXAMPLES_PER_CATEGORY = 5
PROGRESS_INTERVAL_S = 10.0


def default_conv_layers() -> str:
    """The model's default ``--conv_feature_layers`` (the wav2vec 2.0 extractor: 400 samples per first frame,
    then one frame per 320)."""
    from wav2vec2.config import DEFAULT_CONV_LAYERS

    return DEFAULT_CONV_LAYERS


def parse_conv_layers(spec: str) -> list:
    """``(kernel, stride)`` pairs of a ``--conv_feature_layers`` spec (the model's parser); a bad spec is a
    :class:`DataToolError`."""
    from wav2vec2.config import parse_conv_layers as parse

    try:
        return [(k, s) for _, k, s in parse(spec)]
    except ValueError as exc:
        raise DataToolError(f"--conv-feature-layers: {exc}") from None


def ctc_frames_needed(tokens: list) -> int:
    """Fewest frames a CTC alignment of ``tokens`` needs: one per token plus a blank between equal neighbours."""
    return len(tokens) + sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)


@dataclass
class Report:
    manifest: str
    root: str
    config: dict
    entries: int = 0
    kept: int = 0
    kept_samples: int = 0
    kept_samples_cropped: int = 0
    total_samples: int = 0
    cropped: int = 0
    skipped_min: int = 0
    skipped_no_frames: int = 0
    min_input_samples: int | None = None
    skipped_max_tokens: int = 0
    unreadable: dict = field(default_factory=lambda: {"missing": 0, "corrupt": 0, "truncated": 0,
                                                       "wrong_rate": 0, "multi_channel": 0})
    size_mismatch: int = 0
    examples: dict = field(default_factory=dict)
    labels_file: str | None = None
    label_lines: int | None = None
    label_mismatch: bool = False
    empty_labels: int = 0
    labels_too_long: int = 0
    dict_file: str | None = None
    dict_symbols: int | None = None
    missing_symbols: dict = field(default_factory=dict)  # sym -> {"count", "first": "file:line"}
    failures: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def example(self, category: str, text: str) -> None:
        lst = self.examples.setdefault(category, [])
        if len(lst) < EXAMPLES_PER_CATEGORY:
            lst.append(text)

    @property
    def n_unreadable(self) -> int:
        return sum(self.unreadable.values())


def load_dictionary(path: str):
    """The trainer's :class:`common.data.Dictionary` of ``path``, so that validate accepts and refuses exactly
    the lines training does (a blank line or a count that is not an integer is an error; trailing spaces are
    not). Its errors, which name the file and line, become :class:`DataToolError`."""
    if not os.path.isfile(path):
        raise DataToolError(f"dictionary {path} does not exist")
    from common.data import DataError, Dictionary

    try:
        return Dictionary.load(path)
    except DataError as exc:
        raise DataToolError(str(exc)) from None


def check_audio(path: str, expected_size: int, sample_rate: int, decode: bool):
    """Return ``(problem, detail)``; problem is None, 'missing', 'corrupt', 'truncated' (a WAV shorter
    than its header declares), 'wrong_rate', 'multi_channel' or 'size_mismatch'."""
    if not os.path.isfile(path):
        return "missing", "file does not exist"
    try:
        info = sf.info(path)
        if decode:
            data, _ = sf.read(path, dtype="float32", always_2d=True)
            frames = data.shape[0]
        else:
            frames = info.frames
    except Exception as exc:
        return "corrupt", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if info.format in WAV_FORMATS:
        declared = wav_header_tools().wav_declared_frames(path)
        if declared is not None and frames < declared:
            return "truncated", f"truncated WAV: header declares {declared} frames, file holds {frames}"
    elif not decode:  # FLAC, OGG: the header's frame count survives a truncation; decoding the last frame does not
        problem = check_decodes_to_end(path, info.frames)
        if problem:
            return "truncated", problem
    if info.samplerate != sample_rate:
        return "wrong_rate", f"{info.samplerate} Hz, expected {sample_rate} Hz"
    if info.channels != 1:
        return "multi_channel", f"{info.channels} channels"
    if frames != expected_size:
        return "size_mismatch", f"manifest says {expected_size} samples, file has {frames}"
    return None, ""


def validate(data: str, subset: str, *, labels: str | None = "ltr", dict_path: str | None = None,
             min_sample_size: int | None = None, max_sample_size: int | None = None,
             max_tokens: int | None = None, pad: bool = True, sample_rate: int = 16000,
             decode: bool = False, check_audio_files: bool = True, progress: bool = False,
             progress_interval: float = PROGRESS_INTERVAL_S, conv_feature_layers: str | None = None) -> Report:
    """Run all checks and return a :class:`Report` (``report.failures`` empty when usable; ``report.warnings``
    lists what trains nothing without stopping the trainer).

    ``conv_feature_layers``: the model's ``--conv_feature_layers`` spec (default: the model's default), from
    which the frames of each utterance are computed. With ``progress``, a line of entries checked, rate and ETA
    goes to stderr every ``progress_interval`` s.
    """
    from common.data.batching import conv_frames, min_input_samples

    spec = conv_feature_layers or default_conv_layers()
    conv_layers = parse_conv_layers(spec)
    need = min_input_samples(conv_layers, frames=1 if labels else 2)  # as train.py: pretraining needs 2 frames
    tsv = os.path.join(data, f"{subset}.tsv")
    manifest = read_manifest(tsv)
    config = dict(sample_rate=sample_rate, min_sample_size=min_sample_size, max_sample_size=max_sample_size,
                  max_tokens=max_tokens, pad=pad, labels=labels, conv_feature_layers=spec)
    rep = Report(manifest=tsv, root=manifest.root, config=config, entries=len(manifest.entries),
                 min_input_samples=need)
    if not os.path.isdir(manifest.root):
        rep.failures.append(f"audio root {manifest.root} (line 1 of {tsv}) does not exist")

    kept_mask = []
    read_mask = []  # entries whose transcript the trainer reads (not skipped by min_sample_size)
    if check_audio_files and any(rel.lower().endswith(".wav") for rel, _, _ in manifest.entries):
        wav_header_tools()  # the import is not charged to the first file's rate
    prog = Progress(total=len(manifest.entries), desc=f"validate {tsv}", unit="files",
                    interval_s=progress_interval, enabled=progress)
    for rel, size, lineno in manifest.entries:
        where = f"{tsv}:{lineno} {rel}"
        rep.total_samples += size
        keep = True
        if check_audio_files:
            problem, detail = check_audio(os.path.join(manifest.root, rel), size, sample_rate, decode)
            if problem == "size_mismatch":
                rep.size_mismatch += 1
                rep.example("size_mismatch", f"{where}: {detail}")
            elif problem is not None:
                rep.unreadable[problem] += 1
                rep.example(problem, f"{where}: {detail}")
                keep = False
        read_mask.append(min_sample_size is None or size >= min_sample_size)
        if keep and min_sample_size is not None and size < min_sample_size:
            rep.skipped_min += 1
            rep.example("skipped_min", f"{where}: {size} < min_sample_size {min_sample_size}")
            keep = False
        seen = size if max_sample_size is None else min(size, max_sample_size)
        if keep and seen < need:
            rep.skipped_no_frames += 1
            rep.example("skipped_no_frames", f"{where}: {seen} samples < {need}, no frame of the feature extractor")
            keep = False
        tokens = size if (pad or max_sample_size is None) else min(size, max_sample_size)
        if keep and max_tokens is not None and tokens > max_tokens:
            rep.skipped_max_tokens += 1
            rep.example("skipped_max_tokens", f"{where}: {tokens} tokens > max_tokens {max_tokens}")
            keep = False
        if keep:
            rep.kept += 1
            rep.kept_samples += size
            if max_sample_size is not None and size > max_sample_size:
                rep.cropped += 1
                rep.kept_samples_cropped += max_sample_size
            else:
                rep.kept_samples_cropped += size
        kept_mask.append(keep)
        prog.update()
    if manifest.entries:
        prog.close()

    if labels:
        seen = [n if max_sample_size is None else min(n, max_sample_size) for _, n, _ in manifest.entries]
        _check_labels(rep, data, subset, labels, dict_path, manifest, kept_mask, read_mask,
                      conv_frames(seen, conv_layers).tolist())

    if rep.skipped_no_frames:
        rep.warnings.append(
            f"{rep.skipped_no_frames} utterance(s) shorter than the {need} samples the model needs (the feature "
            f"extractor's input for {'one frame' if labels else 'two frames, as pretraining needs'}): training skips "
            "them; as the validation subset train.py refuses them (unless "
            "--skip_invalid_size_inputs_valid_test) and inference.py refuses them")
    if rep.kept == 0:
        rep.failures.append("no utterance is kept: the dataset would be EMPTY under this configuration")
    if rep.n_unreadable:
        rep.failures.append(f"{rep.n_unreadable} unreadable audio file(s)")
    if rep.size_mismatch:
        rep.failures.append(f"{rep.size_mismatch} manifest size(s) differ from the audio files "
                            "(regenerate the manifest)")
    return rep


def _check_labels(rep: Report, data: str, subset: str, labels: str, dict_path, manifest, kept_mask, read_mask,
                  frames) -> None:
    """Labels as the trainer reads them: every transcript of an entry not skipped by ``min_sample_size``
    (``read_mask``) must be non-empty and use only dictionary symbols; a kept entry (``kept_mask``) whose
    transcript needs more CTC frames than its ``frames[entry]`` (the model's, of the audio it sees) trains nothing
    (a warning)."""
    label_file = os.path.join(data, f"{subset}.{labels}")
    rep.labels_file = label_file
    if not os.path.isfile(label_file):
        rep.failures.append(f"label file {label_file} does not exist")
        return
    lines = read_lines(label_file)
    rep.label_lines = len(lines)
    if len(lines) != len(manifest.entries):
        rep.label_mismatch = True
        rep.failures.append(f"{label_file} has {len(lines)} lines but {rep.manifest} has "
                            f"{len(manifest.entries)} entries")
    dict_path = dict_path or os.path.join(data, f"dict.{labels}.txt")
    rep.dict_file = dict_path
    dictionary = load_dictionary(dict_path) if os.path.isfile(dict_path) else None
    symbols = None
    if dictionary is None:
        rep.failures.append(f"dictionary {dict_path} does not exist")
    else:
        symbols = dictionary.indices  # the specials included, as the trainer's check
        rep.dict_symbols = len(dictionary) - dictionary.nspecial
    first_empty = None
    for i, line in enumerate(lines):
        read = i >= len(manifest.entries) or read_mask[i]
        tokens = line.split()
        if not tokens and read:  # the trainer refuses it; a transcript of a skipped entry is never read
            rep.empty_labels += 1
            first_empty = first_empty or f"{label_file}:{i + 1}"
            rep.example("empty_label", f"{label_file}:{i + 1}: empty transcript")
        # needed <= 2 * tokens - 1 <= characters: a line no longer than its frames needs no count
        if i < len(manifest.entries) and kept_mask[i] and len(line.strip()) > frames[i]:
            needed = ctc_frames_needed(tokens)
            if needed > frames[i]:
                rep.labels_too_long += 1
                rep.example("labels_too_long", f"{label_file}:{i + 1}: CTC needs {needed} frames ({len(tokens)} "
                            f"labels + {needed - len(tokens)} repeated), the audio gives {frames[i]}")
        if symbols is not None and read:
            for tok in tokens:
                if tok not in symbols:
                    entry = rep.missing_symbols.setdefault(tok, {"count": 0, "first": f"{label_file}:{i + 1}"})
                    entry["count"] += 1
    if rep.missing_symbols:
        rep.failures.append(f"{len(rep.missing_symbols)} label symbol(s) missing from {dict_path}")
    if rep.empty_labels:
        rep.failures.append(f"{rep.empty_labels} empty transcript(s) (the trainer refuses them), first at "
                            f"{first_empty}")
    if rep.labels_too_long:
        rep.warnings.append(
            f"{rep.labels_too_long} transcript(s) longer than CTC can align in their audio's frames (one frame per "
            "label plus one per pair of equal neighbours): their fine-tuning loss is 0 (zero_infinity) and they "
            "train nothing")


def format_report(rep: Report) -> str:
    hours = lambda n: n / rep.config["sample_rate"] / 3600  # noqa: E731
    c = rep.config
    out = [f"manifest:   {rep.manifest} ({rep.entries} entries, root {rep.root})",
           "config:     " + " ".join(f"{k}={v}" for k, v in c.items()),
           f"total:      {rep.entries} files, {hours(rep.total_samples):.3f} h",
           f"kept:       {rep.kept} files, {hours(rep.kept_samples):.3f} h "
           f"({hours(rep.kept_samples_cropped):.3f} h after cropping)",
           f"cropped:    {rep.cropped} files longer than max_sample_size={c['max_sample_size']} "
           "(random crop when batched)" + ("" if c["pad"] else "; with pad off every batch is also "
                                           "cropped to its shortest member"),
           f"skipped:    {rep.skipped_min + rep.skipped_no_frames + rep.skipped_max_tokens} files ({rep.skipped_min} "
           f"shorter than min_sample_size={c['min_sample_size']}, {rep.skipped_no_frames} too short for the model "
           f"({rep.min_input_samples} samples), {rep.skipped_max_tokens} above max_tokens={c['max_tokens']})",
           "unreadable: {} files ({})".format(rep.n_unreadable, ", ".join(
               f"{k.replace('_', '-')} {v}" for k, v in rep.unreadable.items())),
           f"size mismatch: {rep.size_mismatch} manifest sizes differ from the audio"]
    if rep.labels_file and rep.label_lines is None:  # the label file is missing (reported under RESULT)
        out.append(f"labels:     {rep.labels_file}: not found")
    elif rep.labels_file:
        status = "MISMATCH" if rep.label_mismatch else "OK"
        out.append(f"labels:     {rep.labels_file}: {rep.label_lines} lines ({status}); "
                   f"{rep.empty_labels} empty; {rep.labels_too_long} longer than CTC can align")
        found = f"{rep.dict_symbols} symbols" if rep.dict_symbols is not None else "not found"
        out.append(f"dictionary: {rep.dict_file}: {found}; {len(rep.missing_symbols)} label symbol(s) missing")
        for sym, info in sorted(rep.missing_symbols.items(), key=lambda kv: (-kv[1]["count"], kv[0])):
            out.append(f"  missing symbol {sym!r}: {info['count']} occurrence(s), first at {info['first']}")
    titles = {"skipped_min": "shorter than min_sample_size", "skipped_max_tokens": "above max_tokens",
              "skipped_no_frames": "too short for the model",
              "missing": "missing audio", "corrupt": "corrupt audio", "truncated": "truncated audio",
              "wrong_rate": "wrong sample rate",
              "multi_channel": "multi-channel audio", "size_mismatch": "manifest size differs",
              "empty_label": "empty transcripts", "labels_too_long": "transcript longer than CTC can align"}
    for cat, lst in rep.examples.items():
        out.append(f"first files {titles.get(cat, cat)}:")
        out.extend(f"  {e}" for e in lst)
    if rep.warnings:
        out.append("warnings:")
        out.extend(f"  - {w}" for w in rep.warnings)
    if rep.failures:
        out.append("RESULT: FAILED")
        out.extend(f"  - {f}" for f in rep.failures)
    elif rep.warnings:  # the last line, which scripts print alone (tail -n 1)
        out.append(f"RESULT: OK, with {len(rep.warnings)} warning(s) (listed above)")
    else:
        out.append("RESULT: OK")
    return "\n".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m utils.validate", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="directory holding <subset>.tsv, labels, dict")
    p.add_argument("--subset", required=True, help="subset name, e.g. train-full-960 or dev-other")
    p.add_argument("--labels", default="ltr", help="label extension, or 'none' for unlabelled (pre-training)")
    p.add_argument("--dict", dest="dict_path", default=None, help="dictionary (default DATA/dict.<labels>.txt)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="reference recipe values for the size options (explicit options override)")
    p.add_argument("--min-sample-size", "--min_sample_size", dest="min_sample_size", type=int, default=None)
    p.add_argument("--max-sample-size", "--max_sample_size", dest="max_sample_size", type=int, default=None)
    p.add_argument("--max-tokens", "--max_tokens", dest="max_tokens", type=int, default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pad", dest="pad", action="store_true", default=None,
                   help="pad batches (fine-tuning; default when labels are used)")
    g.add_argument("--no-pad", dest="pad", action="store_false", help="crop batches (pre-training)")
    p.add_argument("--sample-rate", "--sample_rate", dest="sample_rate", type=int, default=16000)
    p.add_argument("--conv-feature-layers", "--conv_feature_layers", dest="conv_feature_layers", default=None,
                   metavar="SPEC", help="the model's feature extractor (train.py's --conv_feature_layers; default: "
                   "the wav2vec 2.0 extractor): sets the frames of each utterance, hence the shortest usable audio "
                   "and the longest transcript CTC can align")
    p.add_argument("--decode", action="store_true", help="decode every file fully (finds truncated files)")
    p.add_argument("--skip-audio", action="store_true", help="trust the manifest; do not open audio files")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--progress-interval", "--progress_interval", dest="progress_interval", type=float,
                   default=PROGRESS_INTERVAL_S, metavar="SECONDS",
                   help=f"seconds between progress lines on stderr (default {PROGRESS_INTERVAL_S:g})")
    args = p.parse_args(argv)
    labels = None if args.labels.lower() in ("", "none") else args.labels
    preset = PRESETS.get(args.preset, {})
    for key in ("min_sample_size", "max_sample_size", "max_tokens", "pad"):
        if getattr(args, key) is None and key in preset:
            setattr(args, key, preset[key])
    if args.pad is None:
        args.pad = labels is not None
    args.labels = labels
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    rep = validate(args.data, args.subset, labels=args.labels, dict_path=args.dict_path,
                   min_sample_size=args.min_sample_size, max_sample_size=args.max_sample_size,
                   max_tokens=args.max_tokens, pad=args.pad, sample_rate=args.sample_rate,
                   decode=args.decode, check_audio_files=not args.skip_audio,
                   progress=not args.quiet, progress_interval=args.progress_interval,
                   conv_feature_layers=args.conv_feature_layers)
    print(format_report(rep))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rep.__dict__, f, indent=1, sort_keys=True)
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
