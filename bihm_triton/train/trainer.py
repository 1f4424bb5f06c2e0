"""The trainer: the epoch loop, validation, early stopping, Ctrl-C (see :mod:`bihm_triton.train`)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time

import torch
from tqdm.auto import tqdm

from ..distributed import Comm, log_likelihood as _sharded_log_likelihood
from ..model import BiHM
from ..progress import bar_disable
from .config import TrainConfig, _check_rows, _step_seed, data_fingerprint
from .rundir import _claim_run_dir, _RunFolder
from .step import _Steps


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :meth:`Trainer.fit`: ``saved`` tells whether ``last.safetensors`` in ``out_dir`` now
    holds the run at the step where it stopped (``str()`` says where)."""

    def __init__(self, message: str, *, saved: bool, out_dir: str | None):
        super().__init__(message)
        self.saved, self.out_dir = saved, out_dir


class _InterruptGuard:
    """SIGINT during :meth:`Trainer.fit`: inside a critical section (a training step, the end-of-epoch
    writes) the first Ctrl-C is deferred to its end; elsewhere, or a second time, it raises at once. A
    ``KeyboardInterrupt`` that leaves a critical section marks the state ``torn`` (not saved)."""

    def __init__(self, install: bool = True):
        self.depth, self.pending, self.torn = 0, False, False
        self._install, self._previous = install, None

    def __enter__(self):
        if (self._install and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        return False

    def _handler(self, signum, frame):
        if self.depth and not self.pending:
            self.pending = True
            print("\nCtrl-C: finishing the current step, then saving a checkpoint (Ctrl-C again stops at once, "
                  "without saving)", file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self):
        self.depth += 1
        try:
            yield
        except KeyboardInterrupt:
            self.torn = True
            raise
        finally:
            self.depth -= 1
        if self.pending and not self.depth:
            self.pending = False
            raise KeyboardInterrupt


class _FiniteTracker:
    """Which parameter went non-finite first, tracked on the device (no host synchronization): before
    every step, ``since[i]`` records the first step at whose start parameter i held NaN (or ±inf in a
    weight: ``0 · inf`` is NaN in ``h · Wᵀ``; infinite biases are legitimate, SPEC §2)."""

    def __init__(self, model):
        named = [(n, p) for n, p in model.named_parameters() if p.numel()]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        dev = self.params[0].device
        self.weights = torch.tensor([not n.endswith(("bias", "logits")) for n in self.names], device=dev)
        self.since = torch.full((len(named),), -1, dtype=torch.int64, device=dev)

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        norms = torch.stack(torch._foreach_norm(self.params, math.inf) if hasattr(torch, "_foreach_norm")
                            else [p.abs().max() for p in self.params])
        bad = torch.isnan(norms) | (torch.isinf(norms) & self.weights)
        self.since = torch.where((self.since < 0) & bad, step, self.since)

    def culprits(self, step: int) -> tuple[int, list[str]]:
        """(the first step at whose start some parameter was non-finite, their names), up to ``step``."""
        since = self.since.tolist()
        hits = [(s, n) for n, s in zip(self.names, since) if 0 <= s <= step]
        if not hits:
            return -1, []
        first = min(s for s, _ in hits)
        return first, [n for s, n in hits if s == first]


class Trainer(_Steps, _RunFolder):
    """Train a :class:`~bihm_triton.model.BiHM` on binary data (SPEC §3).

    Args:
        model: the model (its device is where the batches go).
        train_x: (n, d_0) binary training data; valid_x: (m, d_0) validation data or None (then
            the training bound drives early stopping).
        config: :class:`TrainConfig`.
        out_dir: run directory for config, checkpoints and the log; None keeps nothing on disk.
        overwrite: replace a run already in ``out_dir`` (its files are deleted first); without it a
            folder holding a run is refused (continue it with :meth:`resume`).
        data_source: a note of where the data came from, kept in ``config.json`` (the CLI records
            its ``--data`` and ``--data-dir`` there, so ``--resume`` and ``eval`` find them again).

        cuda_graph: on a CUDA model, capture one training step (loss, backward, Adam) in a CUDA
            graph and replay it for every full batch (``None``, the default: on CUDA). The step
            then costs one graph launch instead of hundreds of kernel launches; the results are the
            same as without it. Where capture fails, training goes on eagerly after a one-line
            message. With more than one rank the graph holds the loss and backward of the rank's
            shard of a full batch (keyed on the shard's size and first row); the gradient sum and
            Adam run after it; a capture that fails on any rank turns the graph off on every rank.
        process_group: ``None`` (default): the initialized ``torch.distributed`` default group,
            else this process alone; ``False``: this process alone; or a process group (see
            :class:`bihm_triton.distributed.Comm`). With more than one rank the constructor, every
            step and :meth:`fit` are collectives: every rank calls them alike.

    Every step is host-synchronization free: statistics stay on the device and are read once per
    epoch (and every ``check_every`` steps, where a non-finite loss stops training).

    Raises:
        ValueError: data of the wrong width, not binary or empty; bad settings; settings, data or
            architecture that differ between the ranks (the message names them).
        FileExistsError: ``out_dir`` already holds a run and ``overwrite`` is false, or names a file
            (raised on every rank).
    """

    check_every = 100

    def __init__(self, model: BiHM, train_x: torch.Tensor, valid_x: torch.Tensor | None = None,
                 config: TrainConfig | None = None, out_dir: str | os.PathLike | None = None, *,
                 cuda_graph: bool | None = None, overwrite: bool = False, data_source: dict | None = None,
                 process_group=None, _resuming: bool = False):
        self.model = model
        self.config = config or TrainConfig()
        self.comm = process_group if isinstance(process_group, Comm) else Comm(process_group)
        self.train_x = model._check_x(train_x, "train_x")
        _check_rows(self.train_x, "train_x")
        self.valid_x = None if valid_x is None else model._check_x(valid_x, "valid_x")
        if self.valid_x is not None:
            _check_rows(self.valid_x, "valid_x")
        self.fingerprints = {"train": data_fingerprint(self.train_x), "valid": data_fingerprint(self.valid_x)}
        self.data_source = data_source
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        # one run: the same settings, data and architecture on every rank, and one seed (seed=None: drawn
        # from torch's generator, on rank 0 for all), then rank 0's initial weights everywhere
        settings = dict(dataclasses.asdict(self.config), seed=None)
        seed = self.comm.agree("the training settings, data fingerprints or model architectures",
                               (settings, self.fingerprints, model.config()), seed=self.config.seed)
        if seed != self.config.seed:
            self.config = dataclasses.replace(self.config, seed=seed)
        self.comm.broadcast_tensors(list(model.parameters()))
        if self.out_dir is not None and not _resuming:
            self.comm.on_main(_claim_run_dir, self.out_dir, overwrite)
        on_cuda = model.device.type == "cuda"
        self.cuda_graph = on_cuda if cuda_graph is None else (bool(cuda_graph) and on_cuda)
        # capturable: Adam's step counter lives on the device, so the update can be replayed in a graph
        # on the CPU the fused Adam (one kernel over every parameter: 0.7 ms a step of the 12-layer net where the
        # foreach form takes 3.3 ms at 2 threads; the same update)
        fused = {"fused": True} if model.device.type == "cpu" else {}
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.config.lr, capturable=self.cuda_graph, **fused)
        self._graph = None  # (CUDAGraph, static x, static seed, static loss, static stats) once captured
        a, b = self.comm.shard(self.config.batch_size)
        self._graph_shard = (b - a, a)  # the rank's shard of a full batch (rows, first row): what a graph replays
        self.epoch = 0
        self.step = 0
        self.best = -math.inf
        self.bad_epochs = 0
        self.history: list[dict] = []
        #: the epoch in progress: batches done, the running sums of its bounds and ESS, seconds spent
        self.position = {"batches": 0, "bound": 0.0, "ess": 0.0, "seconds": 0.0}
        self._guard = _InterruptGuard(install=False)
        self._first_bad = None  # the epoch's first step with a non-finite loss (device), see train_epoch
        self._tracker = None
        self._running, self._t0 = None, 0.0  # (batches done, sums) of the epoch in progress; its start time
        if self.out_dir is not None:
            self._write_config()

    # ------------------------------------------------------------------ epochs
    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.config.seed * 7919 + epoch)
        return torch.randperm(self.train_x.shape[0], generator=g)

    def train_epoch(self, progress: bool | None = None, heartbeat_s: float | None = None) -> dict:
        """The rest of the epoch in progress (all of it, unless an interrupted one is resumed); returns
        the epoch's mean bound and ESS (floats). With more than one rank: this rank's shards of every
        batch, and the means over all ranks' points.

        Args:
            progress: a progress bar on a terminal (default), never in a log file; False: none.
            heartbeat_s: where no bar is shown, print a line every so many seconds (long epochs).

        Raises:
            FloatingPointError: the loss became non-finite (checked every ``check_every`` steps and at
                the end; the last checkpoint is left untouched); the message names the parameters that
                were non-finite first, and when.
        """
        cfg = self.config
        perm = self._permutation(self.epoch).to(self.train_x.device)
        n = self.train_x.shape[0]
        dev = self.train_x.device
        comm = self.comm
        starts = range(0, n, cfg.batch_size)
        done = self.position["batches"]
        # the running sums of a resumed epoch count once in the sums over the ranks: on rank 0
        carried = comm.is_main
        total_bound = torch.tensor(self.position["bound"] if carried else 0.0, device=dev, dtype=torch.float64)
        total_ess = torch.tensor(self.position["ess"] if carried else 0.0, device=dev, dtype=torch.float64)
        self._first_bad = first_bad = torch.full((), -1, device=dev, dtype=torch.int64)
        self._tracker = tracker = _FiniteTracker(self.model)
        bar = tqdm(starts[done:], total=len(starts), initial=done, desc=f"epoch {self.epoch + 1}",
                   disable=True if not comm.is_main else bar_disable(progress), leave=False)
        beat, seen = time.perf_counter(), 0
        for i, start in enumerate(bar, start=done):
            rows = perm[start:start + cfg.batch_size]
            a, b = comm.shard(rows.shape[0])  # this rank's rows of the global batch
            xb = self.train_x[rows[a:b]]
            with self._guard.critical():  # a Ctrl-C waits for the end of the step: the state stays whole
                step = self.step
                tracker.before_step(step)
                out = self.train_step(xb, row_start=a)
                seen += b - a
                total_bound = total_bound + out["bound"].sum()
                total_ess = total_ess + out["ess"].sum()
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(out["loss"]), step, first_bad)
                self._first_bad, self._running = first_bad, (i + 1, total_bound, total_ess)
            if (i + 1) % self.check_every == 0 or start + cfg.batch_size >= n:
                self._raise_if_bad(first_bad)
                bar.set_postfix(bound=f"{float(comm.sum(total_bound)) / min(n, start + cfg.batch_size):.2f}")
            if heartbeat_s and bar.disable and comm.is_main and time.perf_counter() - beat > heartbeat_s:
                beat = time.perf_counter()  # (rank 0 alone: a rank's own clock decides, so no collective here)
                points = min(n, start + cfg.batch_size)
                carried = self.position["bound"]  # a resumed epoch's sum so far (rank 0 holds it)
                mean = ((float(total_bound) - carried) / max(1, seen)) if comm.distributed else float(total_bound) / points
                print(f"  epoch {self.epoch + 1}: {points} of {n} points, train bound "
                      f"{mean:.2f}{' (rank 0 rows this session)' if comm.distributed else ''}", flush=True)
        bar.close()
        self._running = (len(starts), total_bound, total_ess)
        self.position = {"batches": 0, "bound": 0.0, "ess": 0.0, "seconds": 0.0}  # the next call: a new epoch
        self.model.refresh_fused_cache()  # graph replays change the parameters without version bumps
        return {"train_bound": float(comm.sum(total_bound)) / n, "train_ess": float(comm.sum(total_ess)) / n}

    def _raise_if_bad(self, first_bad: torch.Tensor | None) -> None:
        step = -1 if first_bad is None else self.comm.first_step(first_bad)  # every rank decides alike
        if step < 0:
            return
        first, names = self._tracker.culprits(step) if self._tracker is not None else (-1, [])
        if names:
            listed = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            why = (f"{'parameter' if len(names) == 1 else 'parameters'} {listed} went non-finite first "
                   f"(already at the start of step {first})")
        else:
            why = ("every parameter was finite when that step began (the loss overflowed; a lower learning "
                   "rate may help)")
        raise FloatingPointError(f"the loss became non-finite at epoch {self.epoch + 1}, step {step}: {why}; "
                                 f"the last checkpoint was left untouched")

    @torch.no_grad()
    def validate(self, progress: bool = False) -> float:
        """Mean log p̃*(x) estimate (nats) over the validation data with ``valid_k`` samples (fixed seed).

        With more than one rank the points are split across the ranks and the per-point estimates
        gathered (:func:`bihm_triton.distributed.log_likelihood`): every rank gets the same mean."""
        x = self.valid_x if self.valid_x is not None else self.train_x
        ll = _sharded_log_likelihood(self.model, x, self.config.valid_k, seed=_step_seed(self.config.seed, -2),
                                     progress=progress, process_group=self.comm)
        return float(ll.log_p_tilde_star.mean())

    def fit(self, epochs: int | None = None, *, progress: bool | None = None, verbose: bool = True,
            heartbeat_s: float | None = None) -> list[dict]:
        """Train until early stopping, ``max_epochs``, or ``epochs`` more epochs; returns the log records.

        Each epoch appends a record (epoch, step, train_bound, train_ess, valid_bound, seconds) to
        ``history`` and ``log.jsonl`` and writes the checkpoints.

        Args:
            progress: a progress bar per epoch on a terminal (default), never in a log file; False: none.
            verbose: a line per epoch (and, where no bar is shown, a line every ``heartbeat_s`` seconds).

        Raises:
            TrainingInterrupted: Ctrl-C (see the module docstring): ``last.safetensors`` holds the run at
                the step where it stopped (unless ``out_dir`` is None, or a second Ctrl-C stopped it in
                the middle of a step); :meth:`resume` continues it exactly.
            FloatingPointError: the loss became non-finite (see :meth:`train_epoch`).
        """
        cfg = self.config
        stop_at = cfg.max_epochs if epochs is None else min(cfg.max_epochs, self.epoch + epochs)
        with _InterruptGuard(install=not self.comm.distributed) as guard:  # ranks cannot defer a Ctrl-C alike
            self._guard = guard
            try:
                while self.epoch < stop_at and self.bad_epochs < cfg.patience:
                    self._fit_epoch(progress, verbose, heartbeat_s)
            except KeyboardInterrupt:
                self._interrupted(guard)
            finally:
                self._guard = _InterruptGuard(install=False)
        return self.history

    def _fit_epoch(self, progress, verbose: bool, heartbeat_s) -> None:
        t0 = time.perf_counter() - self.position["seconds"]
        self._running = None
        self._t0 = t0
        stats = self.train_epoch(progress, heartbeat_s if verbose else None)
        self._check_parameters(f"at the end of epoch {self.epoch + 1} (step {self.step})")
        valid = self.validate()
        with self._guard.critical():  # the epoch's record, log and checkpoints: all or nothing
            record = {"epoch": self.epoch + 1, **stats, "valid_bound": valid, "step": self.step,
                      "seconds": round(time.perf_counter() - t0, 3)}
            self.epoch += 1
            self.position = {"batches": 0, "bound": 0.0, "ess": 0.0, "seconds": 0.0}
            self._running = None
            improved = record["valid_bound"] > self.best
            if improved:
                self.best, self.bad_epochs = record["valid_bound"], 0
            else:
                self.bad_epochs += 1
            self.history.append(record)
            if verbose and self.comm.is_main:
                print(f"epoch {record['epoch']:4d}  train bound {record['train_bound']:9.3f}  "
                      f"valid bound {record['valid_bound']:9.3f}  ESS {record['train_ess']:5.2f}/{self.config.k}  "
                      f"{record['seconds']:.1f}s{'  *' if improved else ''}", flush=True)
            if self.out_dir is not None:
                self.comm.on_main(self._write_epoch, record, improved)

    def _interrupted(self, guard: _InterruptGuard) -> None:
        """After a Ctrl-C in :meth:`fit`: keep the position reached, save it, raise TrainingInterrupted (one
        process; with more ranks nothing is saved: see the module docstring)."""
        if self.comm.distributed:
            raise TrainingInterrupted("stopped; with more than one rank the run resumes from its last end-of-epoch "
                                      "checkpoint", saved=False, out_dir=self.out_dir) from None
        if guard.torn:
            raise TrainingInterrupted("stopped in the middle of a step or a save; the last checkpoint was left as "
                                      "it was", saved=False, out_dir=self.out_dir) from None
        running = getattr(self, "_running", None)
        if running is not None:  # inside an epoch: the batches done and their sums
            batches, bound, ess = running
            self.position = {"batches": int(batches), "bound": float(bound), "ess": float(ess),
                             "seconds": round(time.perf_counter() - self._t0, 3)}
            self._running = None
        try:
            self._raise_if_bad(self._first_bad)
        except FloatingPointError as e:
            raise TrainingInterrupted(f"not saved: {e}", saved=False, out_dir=self.out_dir) from None
        n_batches = -(-self.train_x.shape[0] // self.config.batch_size)
        if self.position["batches"]:
            where = f"epoch {self.epoch + 1}, batch {self.position['batches']} of {n_batches} (step {self.step})"
        else:
            where = f"the end of epoch {self.epoch} (step {self.step})" if self.epoch else "its start (step 0)"
        if self.out_dir is None:
            raise TrainingInterrupted(f"stopped at {where}; nothing saved (no out_dir); fit() continues from there",
                                      saved=False, out_dir=None) from None
        self.model.refresh_fused_cache()
        try:
            self.save_checkpoint(os.path.join(self.out_dir, "last.safetensors"))
        except FloatingPointError as e:
            raise TrainingInterrupted(f"not saved: {e}", saved=False, out_dir=self.out_dir) from None
        raise TrainingInterrupted(f"saved the run at {where} in {self.out_dir}", saved=True,
                                  out_dir=self.out_dir) from None
