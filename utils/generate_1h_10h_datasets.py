"""Make the Libri-light ``train-1h`` and ``train-10h`` labelled lists from the 960 h lists.

Usage::

    python -m utils.generate_1h_10h_datasets LS_FT_DIR LS_FILELISTS_DIR OUT_DIR [--train-name train-full-960]

LS_FT_DIR is Libri-light's ``librispeech_finetuning`` folder (subfolders ``1h`` and ``9h``).
``train-1h`` holds every flac found under ``1h``, ``train-10h`` those under ``1h`` and ``9h``; each
file is looked up by its stem (``<spk>-<chapter>-<utt>``) in ``<LS_FILELISTS_DIR>/<train-name>.tsv``
and its lines are copied from the .tsv/.wrd/.ltr (same header, entries in the 960 h list order).
"""
from __future__ import annotations

import argparse
import os
import sys

from .common import DataToolError, load_labelled, run_main
from .generate_filelist import find_audio


def stems_under(directory: str) -> list:
    if not os.path.isdir(directory):
        raise DataToolError(f"fine-tuning folder {directory} does not exist")
    stems = [os.path.basename(rel).rsplit(".", 1)[0] for rel in find_audio(directory, "flac")]
    if not stems:  # an empty list would only fail later, in training, as an empty subset
        raise DataToolError(f"no .flac files under {directory} (expected Libri-light's librispeech_finetuning)")
    return stems


def select(stems: list, index: dict, where: str) -> list:
    missing = [s for s in stems if s not in index]
    if missing:
        raise DataToolError(f"{len(missing)} utterance(s) of {where} not found in the training list, "
                            f"first: {missing[0]}")
    return sorted({index[s] for s in stems})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m utils.generate_1h_10h_datasets",
                                description=__doc__.split("\n")[0])
    p.add_argument("ls_ft_dir", metavar="LS_FT_DIR")
    p.add_argument("ls_filelists_dir", metavar="LS_FILELISTS_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--train-name", default="train-full-960", help="name of the full training list")
    p.add_argument("--sample-rate", type=int, default=16000)
    args = p.parse_args(argv)

    full = load_labelled(os.path.join(args.ls_filelists_dir, args.train_name))
    index = {}
    for i, (rel, _, _) in enumerate(full.manifest.entries):
        index[os.path.basename(rel).rsplit(".", 1)[0]] = i
    one_h = stems_under(os.path.join(args.ls_ft_dir, "1h"))
    nine_h = stems_under(os.path.join(args.ls_ft_dir, "9h"))
    for name, stems in (("train-1h", one_h), ("train-10h", one_h + nine_h)):
        chosen = select(stems, index, f"{args.ls_ft_dir} ({name})")
        full.write_subset(os.path.join(args.out_dir, name), chosen)
        samples = sum(full.manifest.entries[i][1] for i in chosen)
        print(f"{name}: {len(chosen)} utterances, {samples / args.sample_rate / 3600:.3f} h", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
