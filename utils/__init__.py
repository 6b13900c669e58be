"""Data tooling: LibriSpeech download and filelists, dataset validation, synthetic speech corpus.

Every tool is a small module with an argparse CLI, runnable as ``python -m utils.<tool>`` from the
repository root (see docs/DATA_TOOLS.md). The package depends only on the standard library, numpy
and soundfile, and never imports the training code.
"""
