#!/usr/bin/env python
"""Evaluate a fine-tuned wav2vec 2.0 CTC model: WER/UER on a filelist, or a latency benchmark (REFERENCE.md §6).

    python inference.py --w2v_path results/finetune/wav2vec2_best.pt --data /datasets/LibriSpeech \
        --valid_subset test-other --output_dir results/inference --batch_size 8 --save_predictions preds.tsv
    torchrun --nproc_per_node 8 inference.py ...           # each rank evaluates a shard; rank 0 reports

Flags: the reference's (common + fine-tuning + inference groups) plus ``--max_duration``, ``--torch_compile``,
``--on_unknown_label``, ``--use_ema`` (``--device`` / ``--cpu`` are common flags), the beam-search decoder's (``--lexicon``, ``--lm_path``,
``--beam``, ...: lexicon-constrained CTC beam search with a word n-gram LM instead of greedy decoding) and chunked
inference of long audio (``--chunk_seconds``, ``--chunk_overlap_seconds``). See docs/INFERENCE.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, List, Optional, Sequence, TextIO

import torch

from common.args import add_common_args, add_inference_args, non_negative_float, positive_int
from wav2vec2.args import add_dropout_and_masking_args, add_finetuning_args

if TYPE_CHECKING:
    from common.chunking import ChunkingConfig
    from common.evaluation import EvalResult

LOG = logging.getLogger("inference")


class InferenceError(RuntimeError):
    """A user error (bad file, bad flag combination): printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="wav2vec 2.0 CTC inference (WER / latency)",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser, inference=True)
    add_dropout_and_masking_args(parser)
    add_finetuning_args(parser)
    add_inference_args(parser)
    g = parser.add_argument_group("inference (ours)")
    g.add_argument("--max_duration", type=non_negative_float, default=None,
                   help="batch by duration: at most this many seconds of padded audio per batch (utterances sorted "
                        "by length; outputs stay in filelist order)")
    g.add_argument("--torch_compile", action="store_true",
                   help="(ours) torch.compile each transformer layer (dynamic shapes; on CPU inductor needs a C++ compiler; "
                        "the first batches compile, reported on stderr)")
    g.add_argument("--on_unknown_label", choices=("error", "unk"), default="error",
                   help="(ours) reference transcript symbols missing from the model's dictionary: an error naming file "
                        "and line (default), or <unk>, which no hypothesis matches, so each such word counts as an "
                        "error (the reference's mapping)")
    g.add_argument("--cuda_graphs", action="store_true",
                   help="replay the forward from CUDA graphs (CUDA only; one graph per batch shape, captured before "
                        "the timed loop): removes the kernel-launch overhead that dominates batch-1 GPU latency")
    g.add_argument("--cuda_graph_pad", type=int, default=4000,
                   help="with --cuda_graphs: round batch lengths up to a multiple of this many samples (the padding "
                        "is masked, results unchanged) so that few graphs cover a corpus; 0 = exact shapes")
    g.add_argument("--use_ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    g.add_argument("--chunk_seconds", type=float, default=None,
                   help="long audio: run each utterance longer than this many seconds as overlapping windows of "
                        "this length and stitch their frame logits (bounds the memory of a forward); None: every "
                        "utterance runs whole (the reference)")
    g.add_argument("--chunk_overlap_seconds", type=float, default=None,
                   help="with --chunk_seconds: seconds (rounded to 20 ms frames) shared by consecutive windows; each "
                        "window drops half of it at each inner edge. None: a quarter of --chunk_seconds")
    g.add_argument("--transcribe_wav", default=None,
                   help="transcribe one 16 kHz mono audio file instead of <data>/<valid_subset>.tsv; prints "
                        "'<file>\t<transcript>' on stdout, everything else on stderr (batch size 1 unless given; "
                        "no --output_dir needed)")
    g.add_argument("--transcribe_filelist", default=None,
                   help="transcribe the utterances of this .tsv filelist (LibriSpeech format, no transcripts "
                        "needed, no WER); prints '<relative path>\t<transcript>' per utterance in filelist order on "
                        "stdout, everything else on stderr (batch size 1 unless given; no --output_dir needed)")
    g.add_argument("--lexicon", default=None,
                   help="beam-search decoding constrained to this lexicon (WORD<TAB>W O R D | lines) instead of "
                        "greedy decoding; build one with python -m common.ngram_lm")
    g.add_argument("--lm_path", default=None,
                   help="word n-gram LM for the beam search (ARPA, .arpa or .arpa.gz; the flashlight backend also "
                        "reads KenLM binary files); needs --lexicon; without it the search uses the lexicon only")
    g.add_argument("--beam", type=positive_int, default=50, help="beam search: hypotheses kept per frame")
    g.add_argument("--beam_threshold", type=float, default=25.0,
                   help="beam search: drop hypotheses scoring this much below the best (natural log)")
    g.add_argument("--token_beam", type=positive_int, default=None,
                   help="beam search: expand at most this many symbols per frame (None: all)")
    g.add_argument("--token_threshold", type=float, default=10.0,
                   help="beam search (python backend): skip symbols whose log-probability is this much below the "
                        "frame's best")
    g.add_argument("--lm_weight", type=float, default=0.87,
                   help="beam search: weight of the natural-log LM probability (fairseq/flashlight's log10 weight "
                        "divided by ln 10: their 2.0 is 0.87)")
    g.add_argument("--word_score", type=float, default=0.0, help="beam search: score added per word")
    g.add_argument("--decoder_backend", default="python", choices=["python", "flashlight"],
                   help="beam search implementation: ours, or flashlight-text's LexiconDecoder + KenLM "
                        "(pip install flashlight-text)")
    return parser


# ----------------------------------------------------------------------------------------------- preparation


def _dictionary(args: argparse.Namespace, ckpt_labels: Optional[str], vocab_size: int):
    from common.data import Dictionary

    if args.labels_path:
        if not os.path.isfile(args.labels_path):
            raise InferenceError(f"dictionary not found: {args.labels_path} (--labels_path)")
        dictionary, source = Dictionary.load(args.labels_path), args.labels_path
    elif ckpt_labels:
        dictionary, source = Dictionary.from_text(ckpt_labels, source=f"{args.w2v_path} (output_labels)"), \
            f"the dictionary stored in {args.w2v_path}"
    else:
        path = os.path.join(args.data, f"dict.{args.labels}.txt")
        if not os.path.isfile(path):
            raise InferenceError(f"no dictionary: {args.w2v_path} stores none and {path} does not exist; "
                                 "pass --labels_path")
        dictionary, source = Dictionary.load(path), path
    if len(dictionary) != vocab_size:
        raise InferenceError(
            f"dictionary size mismatch: {source} has {len(dictionary)} symbols (incl. 4 special) but the model "
            f"{args.w2v_path} outputs {vocab_size} classes; use the dictionary the model was fine-tuned with")
    if args.labels_path and ckpt_labels:
        stored = Dictionary.from_text(ckpt_labels, source=f"{args.w2v_path} (output_labels)")
        if list(stored.symbols) != list(dictionary.symbols):
            raise InferenceError(
                f"--labels_path {args.labels_path} lists other symbols (or another order) than the dictionary stored "
                f"in {args.w2v_path}: the model's outputs would be read as the wrong letters; omit --labels_path to "
                "use the stored one")
    return dictionary


def _load_model(args: argparse.Namespace):
    from wav2vec2.checkpoint import CheckpointError, load_checkpoint

    if not args.w2v_path:
        raise InferenceError("--w2v_path (the fine-tuned checkpoint to evaluate) is required")
    if not os.path.exists(args.w2v_path):
        raise InferenceError(f"checkpoint not found: {args.w2v_path} (--w2v_path)")
    if args.w2v_path_for_args and args.w2v_path_for_args != args.w2v_path:
        LOG.warning("--w2v_path_for_args is ignored: the architecture is read from %s itself", args.w2v_path)
    try:
        loaded = load_checkpoint(args.w2v_path, use_ema=args.use_ema)
    except CheckpointError as exc:
        raise InferenceError(str(exc)) from None
    if loaded.kind != "ctc":
        raise InferenceError(
            f"{args.w2v_path} is a pretraining checkpoint (no CTC head): fine-tune it first "
            "(train.py finetune --w2v_path ...) and evaluate the fine-tuned checkpoint")
    return loaded


def _precision(args: argparse.Namespace, device: torch.device):
    from common.precision import PrecisionPolicy

    fp16 = args.fp16 or (args.amp and not args.bf16)
    if fp16 and args.bf16:
        raise InferenceError("--fp16/--amp and --bf16 are mutually exclusive")
    if fp16 and device.type != "cuda":
        raise InferenceError(f"--fp16 needs a CUDA device (got {device}); on CPU use --bf16 or FP32")
    dev = "cuda" if device.type == "cuda" else "cpu"
    return PrecisionPolicy.from_flags(fp16=fp16, bf16=args.bf16, tf32=args.tf32, cpu=dev == "cpu")


def prepare_model(model: torch.nn.Module, device: torch.device, torchscript: bool = False,
                  torch_compile: bool = False, example_lengths: Sequence[int] = (16000, 12000)) -> torch.nn.Module:
    """Eval mode on ``device``, masked extractor, then optionally TorchScript (traced) or torch.compile.

    TorchScript: ``torch.jit.script`` cannot compile the model (keyword-only arguments and optional generator
    arguments of the forward, dataclass configs), so the CTC model is TRACED with an example padded batch of two
    utterances of different lengths; the trace generalises over batch size and lengths (tested).

    torch.compile: each transformer layer, in place, with dynamic shapes (``common.compile.compile_blocks``, as
    ``train.py --torch_compile``): one graph for all lengths and batch sizes, a second for batches without padding
    (one utterance, or equal lengths). Compiling the whole model instead broke its graph in the feature extractor
    (``addcmul(out=)``: the extractor ran eagerly all the same), recompiled once per extractor layer shape and took
    the CPU positional convolution off its FFT path: 1.8x slower than eager per batch (tiny, CPU).
    A missing C++ compiler (CPU inductor) is an :class:`InferenceError` here, not a traceback at the first batch.
    """
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    extractor = getattr(getattr(model, "w2v_model", None), "feature_extractor", None)
    if extractor is not None and hasattr(extractor, "mask_padding"):
        extractor.mask_padding = True  # batch-invariant GroupNorm statistics (REFERENCE.md §6.2 step 7)
    if torchscript:
        print("Attempting TorchScript export...")
        n = max(example_lengths)
        x = torch.zeros(len(example_lengths), n, device=device)
        gen = torch.Generator().manual_seed(0)
        for i, k in enumerate(example_lengths):
            x[i, :k] = (0.1 * torch.randn(k, generator=gen)).to(device)
        lengths = torch.tensor(list(example_lengths), device=device)
        with torch.no_grad():
            model = torch.jit.trace(model, (x, lengths), check_trace=False)
    elif torch_compile:
        from common.compile import CompileUnavailable, compile_blocks
        from wav2vec2.encoder import TransformerLayer

        try:
            compile_blocks(model, (TransformerLayer,), dynamic=True)
        except CompileUnavailable as exc:
            raise InferenceError(str(exc)) from None
    return model


def capture_graphs(model: torch.nn.Module, batch_sizes: Sequence[Sequence[int]], pad_to: int, autocast,
                   verbose: bool = True):
    """Wrap ``model`` in ``GraphedInference`` and capture one graph per batch shape of ``batch_sizes`` (the sample
    counts of each batch's utterances) before the timed loop. A batch whose utterances all have one length runs
    without lengths (the evaluation loop's unpadded fast path), unless ``pad_to`` pads it."""
    from common.cuda_graphs import GraphedInference

    graphed = GraphedInference(model, pad_to=pad_to)
    shapes = sorted({(len(b), max(int(n) for n in b), len({int(n) for n in b}) > 1) for b in batch_sizes})
    with autocast():
        graphed.prepare(shapes)
    if verbose:
        print(graphed.summary())
    return graphed


def _chunking(args: argparse.Namespace, model: torch.nn.Module) -> Optional["ChunkingConfig"]:
    """The ``ChunkingConfig`` of --chunk_seconds/--chunk_overlap_seconds for ``model`` (None: off); its forwards
    keep the batch limits (--batch_size windows, --max_duration seconds of padded audio)."""
    if args.chunk_seconds is None:
        return None
    from common.chunking import ChunkingConfig, FrameGeometry

    try:
        return ChunkingConfig.from_seconds(args.chunk_seconds, args.chunk_overlap_seconds,
                                           FrameGeometry.from_model(model), sample_rate=args.sample_rate,
                                           batch_size=args.batch_size, max_duration=args.max_duration)
    except ValueError as exc:
        raise InferenceError(str(exc)) from None


def _chunking_line(chunking: "ChunkingConfig", result: "EvalResult") -> str:
    """The summary line of chunked inference: how many utterances ran in several windows."""
    counts = result.chunking_counts()
    return (f"Chunked inference: {counts['chunked_utterances']} of {len(result.utterances)} utterances longer than "
            f"{chunking.window_samples / chunking.sample_rate:g} s ran in {counts['chunk_windows']} windows "
            f"({chunking.describe()})")


def _build_decoder(args: argparse.Namespace, dictionary, verbose: bool = True):
    """The beam-search decoder of --lexicon/--lm_path (None: greedy decoding); every input error is an
    InferenceError naming the file."""
    if args.lm_path and not args.lexicon:
        raise InferenceError("--lm_path needs --lexicon (the words the beam search may emit); build both with "
                             "python -m common.ngram_lm --text <data>/train.wrd --dict <data>/dict.ltr.txt "
                             "--out_dir DIR")
    if not args.lexicon:
        return None
    from common.ctc_decoder import BeamSearchConfig, LexiconError, build_decoder, flashlight_available
    from common.data.errors import DataError
    from common.ngram_lm import ARPAError

    if not os.path.isfile(args.lexicon):
        raise InferenceError(f"lexicon not found: {args.lexicon} (--lexicon)")
    if args.lm_path and not os.path.isfile(args.lm_path):
        raise InferenceError(f"language model not found: {args.lm_path} (--lm_path)")
    if args.decoder_backend == "flashlight" and not flashlight_available():
        raise InferenceError("--decoder_backend flashlight needs the package flashlight-text "
                             "(pip install flashlight-text)")
    try:
        config = BeamSearchConfig(beam=args.beam, beam_threshold=args.beam_threshold, token_beam=args.token_beam,
                                  token_threshold=args.token_threshold, lm_weight=args.lm_weight,
                                  word_score=args.word_score, backend=args.decoder_backend)
    except ValueError as exc:
        raise InferenceError(str(exc)) from None
    if "|" not in dictionary.indices:
        raise InferenceError(f"--lexicon needs a dictionary with the word separator '|' ({dictionary.source})")
    t0 = time.perf_counter()
    try:
        decoder = build_decoder(args.lexicon, dictionary.symbols, args.lm_path, config, blank=dictionary.blank,
                                progress=verbose)
    except LexiconError as exc:
        raise InferenceError(f"{exc} (dictionary {dictionary.source})") from None
    except (ARPAError, DataError) as exc:  # DataError: a lexicon or LM that is not UTF-8 (file, line, column)
        raise InferenceError(str(exc)) from None
    except RuntimeError as exc:  # KenLM (flashlight backend) could not read the LM
        raise InferenceError(f"{args.lm_path}: KenLM cannot read it: {exc}") from None
    oov = decoder.oov_words()
    if not verbose:
        return decoder
    if oov:
        LOG.warning("%d lexicon words are not in the LM %s (scored as <unk>), e.g. %s", len(oov), args.lm_path,
                    ", ".join(oov[:5]))
    lm = decoder.lm
    print(f"Beam search ({config.backend}): lexicon {args.lexicon} ({len(decoder.lexicon)} words)"
          + (f", LM {args.lm_path}" + (f" (order {lm.order}, {len(lm)} n-grams)" if lm is not None else "")
             if args.lm_path else ", no LM")
          + f", beam {config.beam}, lm_weight {config.lm_weight}, word_score {config.word_score}; "
          f"loaded in {time.perf_counter() - t0:.1f} s")
    return decoder


def beam_decode(result, decoder, progress=None, sample_rate: int = 16000, keep_log_probs: bool = False):
    """Replace the greedy hypotheses of ``result`` (an ``EvalResult`` whose utterances kept their log-probs) by
    the beam search's, in place; returns ``(greedy_copy, decode_seconds, audio_seconds)``. ``pred_ids`` become
    the spelling of the decoded words (each followed by ``|``), so the UER is the beam search's too. Runs outside
    the timed model region."""
    from common.evaluation import EvalResult

    greedy = EvalResult(timings=result.timings, timed_utterances=result.timed_utterances,
                        timed_audio_s=result.timed_audio_s, iterations=result.iterations, wer_mode=result.wer_mode,
                        utterances=[dataclasses.replace(u, log_probs=None) for u in result.utterances])
    t0 = time.perf_counter()
    audio_s = 0.0
    for u in result.utterances:
        if not u.nan_frames:  # NaN log-probabilities cannot be scored: the greedy hypothesis stays (run() warns)
            hyp = decoder.decode(u.log_probs)
            u.hypothesis = " ".join(hyp.words)
            u.pred_ids = list(hyp.tokens)
        audio_s += u.num_samples / sample_rate
        if not keep_log_probs:
            u.log_probs = None
        if progress is not None:
            progress.update(1)
    elapsed = time.perf_counter() - t0
    if progress is not None:
        progress.close()
    return greedy, elapsed, audio_s


# ----------------------------------------------------------------------------------------------- main


def _check_min_length(dataset, conv_layers, single_file: bool) -> None:
    """An utterance shorter than the feature extractor's input for one frame has nothing to transcribe (and would
    stop the model with a traceback naming no file): an InferenceError naming the file and its filelist line."""
    import numpy as np

    from common.data.batching import min_input_samples
    from common.data.errors import first_few

    need = min_input_samples(conv_layers)
    short = np.flatnonzero(np.asarray(dataset.sizes) < need)
    if len(short) == 0:
        return
    m = dataset.manifest
    if single_file:
        raise InferenceError(f"audio file {m.audio_path(0)} has {int(m.sizes[0])} samples, fewer than the {need} "
                             "that give the model's feature extractor one frame: too short to transcribe")

    def entry(i: int) -> str:
        return f"{m.audio_path(i)} ({m.path}:{int(m.line_numbers[i])}, {int(m.sizes[i])} samples)"

    raise InferenceError(f"{len(short)} utterance(s) shorter than the {need} samples that give the model's feature "
                         f"extractor one frame (nothing to transcribe): {first_few(short, entry)}; remove them from "
                         f"{m.path}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('ch') else 's'}"


def _prepare_output_folder(flag: str, path: Optional[str]) -> None:
    """Create the folder of an output file given by ``flag`` and check that it can be written."""
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise InferenceError(f"cannot create the folder {folder} of {flag} {path}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise InferenceError(f"cannot write {flag} {path}: the folder {folder} is not writable")


def run(args: argparse.Namespace, transcripts: Optional[TextIO] = None) -> int:
    """One inference job. ``transcripts``: where --transcribe_wav / --transcribe_filelist print their
    ``<file>\t<transcript>`` lines (default stdout)."""
    from common.data import AudioDataset, load_manifest, open_split, single_file_manifest
    from common.data.errors import DataError
    from common.distributed import init_distributed, shutdown
    from common.chunking import check_chunk_flags
    from common.evaluation import (EvalSettings, build_eval_loader, forward_batches, gather_results, plan_batches,
                                   run_ctc_evaluation, shard_batches, write_logits, write_predictions)
    from common.logging import build_logger, inference_metadata
    from common.progress import Progress

    if args.transcribe_wav and args.transcribe_filelist:
        raise InferenceError("give --transcribe_wav or --transcribe_filelist, not both")
    transcribing = bool(args.transcribe_wav or args.transcribe_filelist)
    if not transcribing and args.output_dir is None and args.log_file is None:
        raise InferenceError("give --output_dir (the JSON log nvlog_infer.json goes there) or --log_file; only "
                             "--transcribe_wav / --transcribe_filelist run without one")
    no_wer_note = None  # set when a corpus evaluation finds no transcripts
    if transcribing and args.batch_size is None and args.max_duration is None:
        args.batch_size = 1
    if args.torchscript and args.torch_compile:
        raise InferenceError("--torchscript and --torch_compile are mutually exclusive")
    if args.cuda_graphs and (args.torchscript or args.torch_compile):
        raise InferenceError("--cuda_graphs replays the eager model: not with --torchscript/--torch_compile")
    if args.cuda_graph_pad < 0:
        raise InferenceError("--cuda_graph_pad must be >= 0")
    if args.batch_size is None and args.max_duration is None:
        raise InferenceError("give --batch_size (utterances per batch) or --max_duration (seconds per batch)")
    if args.batch_size is not None and args.batch_size < 1:
        raise InferenceError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.max_duration is not None and not args.max_duration > 0:
        raise InferenceError(f"--max_duration must be > 0 seconds, got {args.max_duration:g}")
    if args.steps < 0 or args.warmup_steps < 0:
        raise InferenceError("--steps and --warmup_steps must be >= 0")
    for flag, path in (("--save_predictions", args.save_predictions), ("--save_logits", args.save_logits),
                       ("--log_file", args.log_file)):
        _prepare_output_folder(flag, path)  # before the run: a finished evaluation must not fail at its last write
    try:
        check_chunk_flags(args.chunk_seconds, args.chunk_overlap_seconds)
    except ValueError as exc:
        raise InferenceError(str(exc)) from None

    try:
        env = init_distributed(cpu=args.cpu, device=args.device)
    except ValueError as exc:  # a GPU that is not there, or one GPU for several ranks
        raise InferenceError(str(exc)) from None
    device = env.device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"--device {device} requested but CUDA is not available")
    if args.cuda_graphs and device.type != "cuda":
        raise InferenceError(f"--cuda_graphs needs a CUDA device (running on {device})")
    policy = _precision(args, device)
    policy.apply_tf32()
    torch.manual_seed(args.seed + env.local_rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)

    loaded = _load_model(args)
    model = loaded.model
    vocab = int(getattr(model, "vocab_size"))
    dictionary = _dictionary(args, loaded.labels, vocab)
    if args.blank_weight != 0.0:
        model.cfg = model.cfg.replace(blank_weight=args.blank_weight, blank_mode=args.blank_mode)
    chunking = _chunking(args, model)
    separator = dictionary.indices.get("|")
    if separator is None:
        LOG.warning("the dictionary has no word separator '|': each utterance is scored as one word")

    try:
        if transcribing:
            tsv = args.transcribe_wav or args.transcribe_filelist
            manifest = (single_file_manifest(args.transcribe_wav) if args.transcribe_wav
                        else load_manifest(args.transcribe_filelist))
            dataset = AudioDataset(manifest=manifest, dictionary=dictionary, sample_rate=args.sample_rate,
                                   normalize=bool(loaded.config.normalize))
        else:
            tsv = os.path.join(args.data, f"{args.valid_subset}.tsv")
            if not os.path.isfile(tsv):
                raise InferenceError(f"filelist not found: {tsv} (--data {args.data} --valid_subset "
                                     f"{args.valid_subset})")
            labels_file = os.path.join(args.data, f"{args.valid_subset}.{args.labels}")
            has_labels = os.path.isfile(labels_file)
            no_wer_note = None if has_labels else f"No WER: {labels_file} not found (--labels {args.labels})"
            if not has_labels and env.is_main:
                print(f"No transcripts ({labels_file} not found): transcribing only, no WER.")
            dataset = open_split(args.data, args.valid_subset, labels=args.labels if has_labels else None,
                                 dictionary=dictionary, sample_rate=args.sample_rate,
                                 normalize=bool(loaded.config.normalize), on_unknown=args.on_unknown_label)
    except (DataError, FileNotFoundError) as exc:
        hint = ("; --on_unknown_label unk scores such symbols as errors instead"
                if "unknown label symbol" in str(exc) else "")
        raise InferenceError(f"{exc}{hint}") from None
    if len(dataset) == 0:
        raise InferenceError(f"{tsv} lists no utterances")
    _check_min_length(dataset, loaded.config.conv_layers, single_file=bool(args.transcribe_wav))

    batches = plan_batches(dataset.sizes, batch_size=args.batch_size, max_duration=args.max_duration,
                           sample_rate=args.sample_rate, drop_last=args.steps > 0 and args.max_duration is None)
    if len(batches) < env.world_size:  # decided identically on every rank, so no rank waits for another
        raise InferenceError(f"{len(batches)} batches for {env.world_size} processes: some would have nothing to "
                             "evaluate; use fewer processes or smaller batches")
    shard = shard_batches(batches, env.world_size, env.rank)
    loader = build_eval_loader(dataset, shard, num_workers=args.num_workers)
    if args.steps > 0 and (args.save_predictions or args.save_logits) and env.is_main:
        print("Performance mode (--steps > 0): no WER, --save_predictions/--save_logits are not written.")
    decoder = _build_decoder(args, dictionary, verbose=env.is_main) if args.steps == 0 else None
    if args.steps > 0 and args.lexicon and env.is_main:
        print("Performance mode (--steps > 0): no beam search (the model alone is timed).")

    metadata = inference_metadata()
    metadata["eval_wer_greedy"] = {"name": "WER (greedy)", "format": ":>3.2f", "unit": "%"}
    metadata["decoder_rtf"] = {"name": "decoder RTF", "format": ":>7.4f", "unit": ""}
    logger = build_logger(args.output_dir, args.log_file, rank=env.rank, default_name="nvlog_infer.json",
                          metadata=metadata)
    logger.log_parameters(vars(args))
    if env.world_size > 1 and env.is_main:
        print(f"Inference with {env.world_size} processes ({device.type})")
    if env.is_main:
        timing = (f"; performance mode: {max(1, args.warmup_steps)} warm-up + {args.steps} timed batches "
                  "(cycling over the filelist)" if args.steps > 0 else "")
        print(f"Evaluating {args.w2v_path} ({loaded.source_format}, {vocab} outputs) on {tsv}: "
              f"{_count(len(dataset), 'utterance')}, {_count(len(batches), 'batch')}, precision {policy.mode}, "
              f"device {device}{timing}")

    model = prepare_model(model, device, torchscript=args.torchscript, torch_compile=args.torch_compile)
    if args.cuda_graphs:
        shapes = [sizes for b in shard for sizes in forward_batches([dataset.sizes[i] for i in b], chunking)]
        model = capture_graphs(model, shapes, args.cuda_graph_pad, policy.autocast, verbose=env.is_main)
    settings = EvalSettings(
        symbols=dictionary.symbols, word_separator=separator, blank=dictionary.blank, steps=args.steps,
        warmup_steps=args.warmup_steps, keep_log_probs=(bool(args.save_logits) or decoder is not None)
        and args.steps == 0,
        autocast=policy.autocast, sample_rate=args.sample_rate, unpadded_fast_path=not args.torchscript,
        progress=Progress(total=None, desc="inference", unit="batch", enabled=env.is_main), chunking=chunking,
    )
    settings.progress.total = settings.num_iterations(len(shard))
    try:
        result = run_ctc_evaluation(model, loader, settings, device=device, batches_per_pass=len(shard))
    except DataError as exc:  # a file that fails to load mid-run: print the transcripts made so far, then fail
        partial = getattr(exc, "partial_evaluation", None)
        if transcribing and args.steps == 0 and partial is not None and partial.utterances and env.world_size == 1:
            names = dataset.manifest.files
            for u in partial.utterances:
                print(f"{names[u.index]}\t{' '.join(u.hypothesis.split())}", file=transcripts or sys.stdout)
            print(f"{_count(len(partial.utterances), 'file')} of {len(dataset)} transcribed before this error:",
                  file=sys.stderr)
        raise
    if args.cuda_graphs and env.is_main:
        print(model.summary())
    greedy = None
    if decoder is not None:  # every rank decodes its own utterances, after (and outside) the timed model loop
        greedy, decode_s, decoded_audio_s = beam_decode(
            result, decoder, sample_rate=args.sample_rate,
            keep_log_probs=bool(args.save_logits),
            progress=Progress(total=len(result.utterances), desc="decoding", unit="utt", enabled=env.is_main))
        greedy = gather_results(greedy)
    result = gather_results(result, keep_log_probs=bool(args.save_logits) and args.steps == 0)

    if env.is_main:
        summary = result.summary()
        if not transcribing and not any(k.endswith("_latency_0_5") for k in summary):
            print("Not enough samples to measure latencies.")
        if greedy is not None:
            greedy_summary = greedy.summary(batch_latency=False)
            for key in ("eval_wer", "eval_uer"):
                if key in greedy_summary:
                    summary[f"{key}_greedy"] = greedy_summary[key]
            summary["decode_time_s"] = decode_s
            if decoded_audio_s > 0:
                summary["decoder_rtf"] = decode_s / decoded_audio_s
        if chunking is not None:
            summary.update(result.chunking_counts())
        nan_utts = result.nan_utterances()
        if nan_utts:
            summary["nan_utterances"] = len(nan_utts)
        if summary:  # (a transcription of a few files can have nothing to report)
            logger.log((), summary)
        logger.flush()
        names = dataset.manifest.files
        if transcribing and args.steps == 0:  # first: a later failure cannot take them away
            for u in result.utterances:
                print(f"{names[u.index]}\t{' '.join(u.hypothesis.split())}", file=transcripts or sys.stdout)
        if args.save_predictions and args.steps == 0:
            write_predictions(args.save_predictions, result, names)
            print(f"Predictions written to {args.save_predictions}")
        if args.save_logits and args.steps == 0:
            write_logits(args.save_logits, result, names, dictionary.symbols)
            print(f"Log-probabilities written to {args.save_logits}")
        if "eval_wer" in summary:
            counts = result.error_counts()
            print(f"WER: {summary['eval_wer']:.2f}% ({counts['w_errs']} errors / {counts['w_len']} words)")
            print(f"UER: {summary['eval_uer']:.2f}% ({counts['c_errs']} errors / {counts['c_len']} units; "
                  "letter dictionaries: CER counting word boundaries)")
            if "eval_wer_greedy" in summary:
                g = greedy.error_counts()
                print(f"WER (greedy decoding): {summary['eval_wer_greedy']:.2f}% ({g['w_errs']} errors / "
                      f"{g['w_len']} words)")
            if counts["utterances"] and counts["empty_predictions"] == counts["utterances"]:
                print("WARNING: every prediction is empty (blank-only CTC output): the model is not fine-tuned "
                      "enough, or the dictionary / blank index does not match the model (PITFALLS #11)")
        if nan_utts:
            first = ", ".join(dataset.manifest.files[u.index] for u in nan_utts[:5])
            print(f"WARNING: {len(nan_utts)} of {len(result.utterances)} utterances have NaN log-probabilities in "
                  f"some frames (a broken forward, e.g. FP16 overflow: try --bf16 or FP32), read as blanks by "
                  f"greedy decoding" + (" and not beam-searched" if decoder is not None else "") + f": {first}"
                  + (", ..." if len(nan_utts) > 5 else ""))
        if chunking is not None:
            print(_chunking_line(chunking, result))
        if "decoder_rtf" in summary:
            print(f"Beam search ({args.decoder_backend}): {summary['decode_time_s']:.2f} s for {decoded_audio_s:.1f} s "
                  f"of audio, {1000.0 * summary['decoder_rtf']:.1f} ms per second of audio"
                  + (" (rank 0's share)" if env.world_size > 1 else ""))
        if "dnn_throughput_utts_per_s" in summary:
            print(f"Throughput (model): {summary['dnn_throughput_utts_per_s']:.2f} utterances/s, "
                  f"{summary['dnn_throughput_audio_s_per_s']:.2f} s of audio/s, RTF {summary['dnn_rtf']:.4f}")
        if no_wer_note and args.steps == 0:  # repeated at the end: the first note has scrolled away by now
            print(no_wer_note)
    logger.close()
    shutdown()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from common.data.errors import DataError, error_message

    transcripts = sys.stdout
    # transcribing: stdout carries the transcripts alone (for a pipe or a file), the rest of the output goes to stderr
    quiet = contextlib.redirect_stdout(sys.stderr) if (args.transcribe_wav or args.transcribe_filelist) \
        else contextlib.nullcontext()
    try:
        with quiet:
            return run(args, transcripts)
    except BrokenPipeError:  # the reader of the output went away (``| head``): not an error of this run
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit must not fail again
        return 0
    except (InferenceError, DataError, OSError) as exc:  # DataError / OSError: a file read or written during the run
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 2
    finally:
        # as train.py: a run that fails after init_distributed (a missing checkpoint, an unknown label symbol) ends
        # its process group too; one left to interpreter exit keeps gloo's threads running into finalisation, where
        # the process can abort (SIGABRT instead of status 2). A no-op when run() ended it
        from common.distributed import shutdown

        shutdown()


if __name__ == "__main__":
    sys.exit(main())
