"""dllogger-compatible metric logging, stdout rendering and TensorBoard (REFERENCE.md §5.9, §6.5).

Log files follow NVIDIA dllogger v1.0.0's ``JSONStreamBackend``: one record per line, ``DLLL `` + a JSON object::

    DLLL {"timestamp": "1700000000.123", "datetime": "2023-11-14 22:13:20.123000", "elapsedtime": "0.5",
          "type": "LOG", "step": [1, 10, 500], "data": {"train_loss": 6.1, ...}}
    DLLL {"timestamp": ..., "elapsedtime": ..., "datetime": ..., "type": "METADATA", "metric": "train_loss",
          "metadata": {"name": " loss", "format": ":>6.3f"}}

``step`` is a list (tuple steps), a string (``"PARAMETER"``) or ``[]``. NaN/inf values are written the way Python's
``json`` writes them (``NaN``/``Infinity``; Python's ``json.loads`` reads them back). When NVIDIA's ``dllogger``
package is importable (and genuine: it has ``JSONStreamBackend``) its backends are used; otherwise ours write the same
format. No module-level logger object exists: create a :class:`MetricLogger` and pass it around.

Training layout (rank 0 only): JSON appended to ``--log_file`` or ``<output_dir>/nvlog.json``, a fresh copy
``<log path>.<n>`` per job, stdout; TensorBoard event files under ``<output_dir>/{train_inner,train,valid,valid_ema}``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import warnings
from datetime import datetime
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, TextIO, Tuple, Union

from common.progress import print_quietly

__all__ = [
    "DLLL_PREFIX",
    "Verbosity",
    "genuine_dllogger",
    "JSONStreamWriter",
    "StdoutWriter",
    "format_step",
    "format_metric",
    "MetricLogger",
    "training_metadata",
    "inference_metadata",
    "unique_log_path",
    "build_logger",
    "read_dllogger_log",
    "TensorBoardLogger",
    "TENSORBOARD_DIRS",
]

DLLL_PREFIX = "DLLL "
Step = Union[str, Sequence[int]]


class Verbosity:
    """dllogger verbosity levels."""

    OFF = -1
    DEFAULT = 0
    VERBOSE = 1


def genuine_dllogger():
    """NVIDIA's ``dllogger`` module if importable and genuine (has ``JSONStreamBackend``), else None."""
    try:
        mod = importlib.import_module("dllogger")
    except Exception:
        return None
    return mod if hasattr(mod, "JSONStreamBackend") and hasattr(mod, "StdOutBackend") else None


def _jsonable(value: Any) -> Any:
    """Python numbers/strings/lists for json: numpy and torch scalars -> float/int, tuples -> lists."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()  # numpy scalars, 0-d arrays, one-element tensors
        except (ValueError, RuntimeError, TypeError):
            pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return str(value)


class JSONStreamWriter:
    """Our implementation of dllogger v1.0.0's ``JSONStreamBackend`` (same line format, same key order)."""

    def __init__(self, verbosity: int, filename: str, append: bool = False) -> None:
        self.verbosity = verbosity
        self.filename = filename
        self.file: Optional[TextIO] = open(filename, "a" if append else "w", encoding="utf-8")

    def _write(self, record: Dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(DLLL_PREFIX + json.dumps(record) + "\n")

    def metadata(self, timestamp: datetime, elapsedtime: float, metric: str, metadata: Mapping[str, Any]) -> None:
        self._write(dict(timestamp=str(timestamp.timestamp()), elapsedtime=str(elapsedtime),
                         datetime=str(timestamp), type="METADATA", metric=metric, metadata=dict(metadata)))

    def log(self, timestamp: datetime, elapsedtime: float, step: Any, data: Mapping[str, Any]) -> None:
        self._write(dict(timestamp=str(timestamp.timestamp()), datetime=str(timestamp),
                         elapsedtime=str(elapsedtime), type="LOG", step=step, data=dict(data)))

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def format_step(step: Any) -> str:
    """Reference step rendering: ``(epoch, iter, steps_per_epoch)`` -> ``"epoch    1 | iter  10/500"``."""
    if isinstance(step, str):
        return step
    step = list(step)
    out = ""
    if len(step) > 0:
        out += f"epoch {step[0]:>4}"
    if len(step) > 1:
        out += f" | iter {step[1]:>3}"
    if len(step) > 2:
        out += f"/{step[2]}"
    return out


def format_metric(metric: str, metadata: Mapping[str, Any], value: Any) -> str:
    """Reference metric rendering: ``"| <name> <formatted value> <unit>"``; name defaults to ``"<key> : "``."""
    name = metadata.get("name", f"{metric} : ")
    fmt = metadata.get("format")
    if value is None or fmt is None:
        text = str(value)
    else:
        try:
            text = ("{" + fmt + "}").format(value)
        except (ValueError, TypeError):
            text = str(value)
    parts = [p for p in (name, text, metadata.get("unit")) if p is not None]
    return "| " + " ".join(parts)


def _default_prefix(timestamp: datetime) -> str:
    return f"DLL {timestamp} - "


class StdoutWriter:
    """Console backend with the reference's step and metric formats (dllogger ``StdOutBackend`` look-alike)."""

    def __init__(self, verbosity: int = Verbosity.VERBOSE, stream: Optional[TextIO] = None,
                 prefix_format: Callable[[datetime], str] = _default_prefix) -> None:
        self.verbosity = verbosity
        self.stream = stream
        self.prefix_format = prefix_format
        self._metadata: Dict[str, Dict[str, Any]] = {}

    def metadata(self, timestamp: datetime, elapsedtime: float, metric: str, metadata: Mapping[str, Any]) -> None:
        self._metadata.setdefault(metric, {}).update(metadata)

    def log(self, timestamp: datetime, elapsedtime: float, step: Any, data: Mapping[str, Any]) -> None:
        metrics = " ".join(format_metric(k, self._metadata.get(k, {}), v) for k, v in data.items())
        line = f"{self.prefix_format(timestamp)}{format_step(step)} {metrics}"
        print_quietly(line, file=self.stream or sys.stdout)

    def flush(self) -> None:
        try:
            (self.stream or sys.stdout).flush()
        except (OSError, ValueError):  # a closed pipe (see print_quietly)
            pass


class MetricLogger:
    """Dispatches records to backends (ours or dllogger's; same interface). Rank != 0: pass no backends.

    ``log(step, data)`` — step: tuple ``(epoch, iter, steps_per_epoch)``, ``(epoch,)``, ``()`` or ``"PARAMETER"``.
    """

    def __init__(self, backends: Iterable[Any] = (), clock: Callable[[], datetime] = datetime.now) -> None:
        self.backends: List[Any] = list(backends)
        self._clock = clock
        self.start_time = clock()

    def _times(self):
        now = self._clock()
        return now, (now - self.start_time).total_seconds()

    def metadata(self, metric: str, metadata: Mapping[str, Any]) -> None:
        ts, el = self._times()
        for b in self.backends:
            b.metadata(ts, el, metric, dict(metadata))

    def register_metadata(self, table: Mapping[str, Mapping[str, Any]]) -> None:
        for metric, meta in table.items():
            self.metadata(metric, meta)

    def log(self, step: Step, data: Mapping[str, Any], verbosity: int = Verbosity.DEFAULT) -> None:
        step_out = step if isinstance(step, str) else [_jsonable(s) for s in step]
        data_out = {str(k): _jsonable(v) for k, v in data.items()}
        ts, el = self._times()
        for b in self.backends:
            if b.verbosity >= verbosity:
                b.log(ts, el, step_out, data_out)
                b.flush()  # on disk at once: a killed job (SIGKILL, OOM, node loss) keeps every record it logged

    def log_parameters(self, params: Mapping[str, Any]) -> None:
        """Every argument as its own PARAMETER record, ``{"step": "PARAMETER", "data": {name: value}}``, in the
        arguments' order, as the reference logs them (start-up §5.1 step 11, §5.9)."""
        for name, value in params.items():
            self.log("PARAMETER", {name: value})

    def flush(self) -> None:
        for b in self.backends:
            b.flush()

    def close(self) -> None:
        self.flush()
        for b in self.backends:
            close = getattr(b, "close", None)
            if close is not None:
                close()
            elif hasattr(b, "file"):  # dllogger's JSONStreamBackend only closes at exit
                b.file.close()
        self.backends = []

    def __enter__(self) -> "MetricLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_SCOPE_PREFIXES = {"train": "", "train_avg": "avg train ", "val": "  avg val ", "val_ema": "  EMA val "}


def training_metadata(scopes: Iterable[str] = ("train", "train_avg", "val", "val_ema")) -> Dict[str, Dict[str, str]]:
    """Metric metadata of the reference (§5.9) for each scope id, plus ``temp``, ``grad_norm``, ``tflop/s``, ``mfu``,
    ``data_wait`` and ``update`` (the global update number of the record; ours)."""
    table: Dict[str, Dict[str, str]] = {}
    for sid in scopes:
        pre = _SCOPE_PREFIXES.get(sid, f"{sid} ")
        table.update({
            f"{sid}_loss": {"name": f"{pre} loss", "format": ":>6.3f"},
            f"{sid}_accuracy": {"name": f"{pre}acc", "format": ":>6.3f"},
            f"{sid}_prob_perplexity": {"name": f"{pre}p pplx", "format": ":>6.3f"},
            f"{sid}_code_perplexity": {"name": f"{pre}c pplx", "format": ":>6.3f"},
            f"{sid}_temp": {"name": f"{pre}temp", "format": ":>5.3f"},
            f"{sid}_ntokens": {"unit": "tokens", "format": ":>8.0f"},
            f"{sid}_took": {"name": "took", "unit": "s", "format": ":>3.2f"},
            f"{sid}_ntokens/s": {"unit": "tokens/s", "format": ":>8.2f"},
            f"{sid}_tflop/s": {"name": "model", "unit": "TFLOP/s", "format": ":>7.3f"},
            f"{sid}_mfu": {"name": "MFU", "format": ":>5.3f"},
            f"{sid}_data_wait": {"name": "data wait", "format": ":>5.3f"},
            f"{sid}_uer": {"name": f"{pre} uer", "format": ":>6.2f"},
            f"{sid}_wer": {"name": f"{pre} wer", "format": ":>6.2f"},
            f"{sid}_raw_wer": {"name": f"{pre} raw wer", "format": ":>6.2f"},
            f"{sid}_lr": {"name": "lr", "format": ":>3.2e"},
            f"{sid}_loss_scale": {"name": "loss scale", "format": ":>3.2e"},
            f"{sid}_grad_norm": {"name": "gnorm", "format": ":>6.3f"},
            f"{sid}_update": {"name": "update", "format": ":d"},
        })
    return table


def inference_metadata(stages: Iterable[str] = ("data", "dnn", "data+dnn")) -> Dict[str, Dict[str, str]]:
    """Inference metadata (§6.5) registered under the keys actually logged (a reference bug, REFERENCE-QUIRKS §9.2,
    fixed: ``_0_99`` not ``.99``)."""
    table: Dict[str, Dict[str, str]] = {"eval_wer": {"name": "WER", "format": ":>3.2f", "unit": "%"}}
    for stage in stages:
        label = stage.replace("dnn", "DNN")
        for suffix, text in (("0_99", "99%"), ("0_95", "95%"), ("0_9", "90%"), ("0_5", "avg")):
            table[f"{stage}_latency_{suffix}"] = {"name": f"{label} latency {text}", "format": ":>7.2f",
                                                  "unit": "ms"}
    return table


def unique_log_path(path: str) -> str:
    """``<path>.<n>`` with n = 1 + the largest numeric suffix among existing ``<path>.*`` files (1 if none)."""
    directory = os.path.dirname(path) or "."
    base = os.path.basename(path)
    pattern = re.compile(re.escape(base) + r"\.(\d+)$")
    numbers = [int(m.group(1)) for f in (os.listdir(directory) if os.path.isdir(directory) else ())
               if (m := pattern.match(f))]
    return f"{path}.{max(numbers, default=0) + 1}"


def build_logger(output_dir: Optional[str], log_file: Optional[str] = None, rank: int = 0, stdout: bool = True,
                 default_name: str = "nvlog.json", unique_copy: bool = True,
                 metadata: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 use_dllogger: Optional[bool] = None, stream: Optional[TextIO] = None) -> MetricLogger:
    """The reference's logger set-up (§5.9): JSON appended to ``log_file`` (default ``<output_dir>/nvlog.json``;
    inference: ``nvlog_infer.json``), a fresh JSON copy ``<path>.<n>``, stdout; nothing on ranks other than 0.
    ``output_dir`` and ``log_file`` both None: stdout only.

    ``use_dllogger``: None = use NVIDIA dllogger's backends when genuine; False = always ours.
    """
    if rank != 0:
        return MetricLogger([])
    dll = genuine_dllogger() if use_dllogger in (None, True) else None
    if use_dllogger and dll is None:
        raise RuntimeError("use_dllogger=True but NVIDIA dllogger is not installed")
    backends: List[Any] = []
    if output_dir is not None or log_file is not None:
        if output_dir is not None:
            os.makedirs(output_dir, exist_ok=True)
        path = log_file or os.path.join(output_dir, default_name)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # --log_file in a folder still to make
        copy_path = unique_log_path(path) if unique_copy else None
        json_backend = dll.JSONStreamBackend if dll is not None else JSONStreamWriter
        backends.append(json_backend(Verbosity.VERBOSE, path, append=True))
        if copy_path:
            backends.append(json_backend(Verbosity.VERBOSE, copy_path))
    if stdout:
        backends.append(StdoutWriter(Verbosity.VERBOSE, stream=stream))
    logger = MetricLogger(backends)
    if metadata:
        logger.register_metadata(metadata)
    return logger


def iter_dllogger_log(path: str) -> Iterator[Tuple[int, str, Any]]:
    """Each line of a dllogger JSON log as ``(line number, kind, record)``; ``kind``: ``"record"`` (a
    ``DLLL`` line holding a JSON object, the record), ``"malformed"`` (``DLLL`` JSON that is not an object),
    ``"unreadable"`` (a ``DLLL`` line that is not JSON, e.g. a truncated last line), ``"stdout"`` (a dllogger console
    line, ``DLL ...``), ``"blank"`` or ``"foreign"`` (anything else); ``record`` is None but for records. Undecodable bytes are
    replaced; ``NaN``/``Infinity`` values parse as floats."""
    prefix = DLLL_PREFIX.strip()
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                yield number, "blank", None
                continue
            if not line.startswith(prefix):
                yield number, "stdout" if line.startswith("DLL ") else "foreign", None
                continue
            try:
                record = json.loads(line[len(prefix):].strip())
            except json.JSONDecodeError:
                yield number, "unreadable", None
                continue
            if isinstance(record, dict):
                yield number, "record", record
            else:  # (a stray "DLLL [1, 2]" line is no record)
                yield number, "malformed", None


def read_dllogger_log(path: str) -> List[Dict[str, Any]]:
    """The records of a dllogger JSON log (lines ``DLLL {...}``; other and truncated lines are skipped)."""
    return [record for _, kind, record in iter_dllogger_log(path) if kind == "record"]


TENSORBOARD_DIRS = {"train": "train_inner", "train_avg": "train", "val": "valid", "val_ema": "valid_ema"}


class TensorBoardLogger:
    """One ``SummaryWriter`` per scope (``train`` -> ``train_inner``, ``train_avg`` -> ``train``, ``val`` -> ``valid``,
    ``val_ema`` -> ``valid_ema``); every metric key of a scope written with ``add_scalar`` at the global update.

    Without the ``tensorboard`` package (or ``enabled=False`` / rank != 0) every call is a no-op; a missing package
    gives one warning at construction.
    """

    def __init__(self, output_dir: str, enabled: bool = True, rank: int = 0, flush_secs: int = 120,
                 max_queue: int = 200, dirs: Mapping[str, str] = TENSORBOARD_DIRS) -> None:
        self.output_dir = output_dir
        self.dirs = dict(dirs)
        self.flush_secs = flush_secs
        self.max_queue = max_queue
        self._writers: Dict[str, Any] = {}
        self._writer_cls = None
        if enabled and rank == 0:
            try:
                importlib.import_module("tensorboard")
                self._writer_cls = importlib.import_module("torch.utils.tensorboard").SummaryWriter
            except Exception as exc:  # ImportError or a broken install
                warnings.warn(f"TensorBoard logging disabled: the 'tensorboard' package is not usable ({exc}). "
                              f"Install it with `pip install tensorboard`.", RuntimeWarning, stacklevel=2)

    @property
    def enabled(self) -> bool:
        return self._writer_cls is not None

    def _writer(self, scope: str):
        if scope not in self._writers:
            logdir = os.path.join(self.output_dir, self.dirs.get(scope, scope))
            self._writers[scope] = self._writer_cls(logdir, flush_secs=self.flush_secs, max_queue=self.max_queue)
        return self._writers[scope]

    def log_scalars(self, scope: str, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        w = self._writer(scope)
        for k, v in metrics.items():
            v = _jsonable(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                w.add_scalar(k, float(v), step)

    def log_hparams(self, params: Mapping[str, Any], scope: str = "train") -> None:
        """Hyper-parameters (str/bool/int/float values) once, on the ``train_inner`` writer."""
        if not self.enabled:
            return
        hp = {k: v for k, v in params.items() if isinstance(v, (str, bool, int, float))}
        self._writer(scope).add_hparams(hp, {})

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
