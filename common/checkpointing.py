"""Training checkpoints: atomic saving, the reference's naming and retention, resume from the newest loadable.

Files are ``<output_dir>/<name>_update<step>.pt`` and ``<name>_best.pt`` (reference §2.1). Retention follows the
reference (§2.3): on each save, for every milestone the tracked checkpoint whose update number is closest to it is
kept, plus the two most recent. Every file is written to a temporary file and renamed, so an interrupted save
never leaves a broken checkpoint behind.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any, Callable, Iterable, Optional

import torch

__all__ = ["atomic_torch_save", "Checkpointer", "UnreadableCheckpointsError"]


def atomic_torch_save(obj: Any, path: str) -> None:
    """Write to ``path.tmp<pid>`` in the same directory, fsync, then rename over ``path`` (two processes writing
    the same checkpoint never share a temporary file). A failed write (full disk, a kill signal's exception) leaves
    ``path`` as it was and removes the partial temporary file."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    def remove_tmp() -> None:
        try:
            os.remove(tmp)
        except OSError:
            pass

    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        # torch's zip writer reports a failed write (a full disk, a quota) as "[enforce fail at inline_container.cc]
        # unexpected pos ...", with the OSError only in the exception chain: one OSError naming the file instead
        remove_tmp()
        cause = _os_error_in_chain(exc)
        if cause is not None:
            raise OSError(cause.errno, f"could not write checkpoint: {cause.strerror or cause}", path) from exc
        if isinstance(exc, RuntimeError) and ("PytorchStreamWriter" in str(exc) or "inline_container" in str(exc)):
            first_line = str(exc).strip().splitlines()[0]  # torch's zip writer failing to write
            raise OSError(errno.EIO, f"could not write checkpoint ({first_line})", path) from exc
        raise  # anything else (a CUDA fault, an object torch cannot save) keeps its own traceback
    except BaseException:
        remove_tmp()
        raise


def _os_error_in_chain(exc: BaseException) -> Optional[OSError]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


class Checkpointer:
    def __init__(self, output_dir: str, name: str = "wav2vec2", keep_milestones: Iterable[int] = (100, 200, 300, 400),
                 log: Callable[[str], None] = print):
        self.output_dir = output_dir
        self.name = name
        self.keep_milestones = list(keep_milestones)
        self.log = log
        self._pattern = re.compile(rf"{re.escape(name)}_update(\d+)\.pt")
        self.tracked = self._scan()

    def path_for(self, step: int) -> str:
        return os.path.join(self.output_dir, f"{self.name}_update{step}.pt")

    @property
    def best_path(self) -> str:
        return os.path.join(self.output_dir, f"{self.name}_best.pt")

    def _scan(self) -> list[tuple[int, str]]:
        """``<name>_update<N>.pt`` files directly in ``output_dir``, by update number (read with ``os.scandir``:
        a directory name with glob characters such as ``exp[lr=1e-4]`` is taken literally). The reference searches
        subdirectories too, so another run's checkpoints kept below ``output_dir`` were resumed from and deleted by
        the retention rule; here they are left alone (docs/DEVIATIONS.md)."""
        return sorted(self._matches(self.output_dir))

    def _matches(self, directory: str) -> list[tuple[int, str]]:
        pattern = self._pattern
        try:
            entries = list(os.scandir(directory))
        except OSError:  # missing or unreadable: nothing to resume from
            return []
        return [(int(m.group(1)), e.path) for e in entries
                if (m := pattern.fullmatch(e.name)) and e.is_file()]

    def _note_nested(self) -> None:
        """Name the checkpoints one level below ``output_dir`` (other runs' that a resume leaves alone)."""
        try:
            subdirs = [e.path for e in os.scandir(self.output_dir) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        nested = sorted(p for d in subdirs for _, p in self._matches(d))
        if nested:
            self.log(f"Note: {len(nested)} checkpoint(s) in subdirectories of {self.output_dir} (e.g. {nested[0]}) "
                     "belong to other runs: not resumed from, never deleted")

    def save(self, state: dict, step: int, best: bool = False) -> str:
        path = self.path_for(step)
        self.log(f"Saving {path}...")
        atomic_torch_save(state, path)
        if best:
            atomic_torch_save(state, self.best_path)
        keep = set()
        for milestone in self.keep_milestones:
            if self.tracked:
                keep.add(min(self.tracked, key=lambda t: (abs(t[0] - milestone), t[0]))[1])
        self.tracked = [t for t in self.tracked if t[1] != path] + [(step, path)]
        self.tracked.sort()
        recent = {p for _, p in self.tracked[-2:]}
        survivors = []
        for s, p in self.tracked:
            if p in keep or p in recent:
                survivors.append((s, p))
            else:
                try:
                    os.remove(p)
                    self.log(f"Removed {p} (retention: the newest two and those nearest --keep_milestones stay)")
                except OSError:
                    pass
        self.tracked = survivors
        return path

    def _remove_stale_temporaries(self) -> None:
        """A save killed mid-write (SIGKILL, a node lost) leaves its ``<checkpoint>.tmp<pid>`` behind, as large as a
        checkpoint: removed at the next resume when the process that wrote it is gone."""
        try:
            names = os.listdir(self.output_dir)
        except OSError:
            return
        for name in names:
            m = re.fullmatch(rf"{re.escape(self.name)}_(?:update\d+|best)\.pt\.tmp(\d+)", name)
            if m is None or _process_alive(int(m.group(1))):
                continue
            path = os.path.join(self.output_dir, name)
            try:
                os.remove(path)
                self.log(f"Removed {path}: the unfinished write of a killed process")
            except OSError:
                pass

    def load_latest(self, reader: Callable[[str], dict]) -> Optional[tuple[str, dict]]:
        """The newest tracked checkpoint that loads; unreadable ones are reported and skipped. None when there is
        no checkpoint at all.

        Raises:
            UnreadableCheckpointsError: checkpoints exist but none loads (restarting from update 0 would silently
                overwrite them).
        """
        found = self._scan()
        self._note_nested()
        self._remove_stale_temporaries()
        for step, path in reversed(found):
            try:
                return path, reader(path)
            except Exception as exc:  # noqa: BLE001 - a corrupt file must not stop the resume
                self.log(f"WARNING: cannot load {path} ({exc}); trying an older checkpoint")
        if found:
            best = f"; {self.best_path} may still load (--ckpt {self.best_path} resumes from it)" \
                if os.path.exists(self.best_path) else ""
            raise UnreadableCheckpointsError(
                f"--resume: none of the {len(found)} checkpoints in {self.output_dir} can be read "
                f"({', '.join(os.path.basename(p) for _, p in found)}){best}; move them away to start afresh")
        return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # (no permission: it exists)
        return True
    return True


class UnreadableCheckpointsError(RuntimeError):
    """Every checkpoint found for ``--resume`` is truncated or corrupt."""
