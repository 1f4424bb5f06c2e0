"""Training with the authors' defaults (SPEC §3): Adam, K = 10, batch 100, early stopping on the validation bound.

A run lives in one directory:

* ``config.json`` — the model architecture and the training settings;
* ``last.safetensors`` — weights, Adam state and the trainer's counters (metadata), rewritten
  atomically after every epoch: an interrupted save leaves the previous one intact;
* ``best.safetensors`` — the weights with the best validation bound so far (:meth:`BiHM.load` reads it);
* ``log.jsonl`` — one JSON object per epoch (train and validation bounds, ESS, time).

Every random choice is a function of ``(seed, epoch, step)``: the shuffling of epoch e and the
Philox seed of step t; so :meth:`Trainer.resume` continues a run exactly as if it had not stopped.

**More than one process** (:mod:`bihm_triton.distributed`): under ``torchrun``, or with any
initialized ``torch.distributed`` process group, every rank runs the same :class:`Trainer` on the
same data and takes rows ``[a, b)`` of every global batch (:func:`~bihm_triton.distributed.shard_range`),
computed with ``row_start=a`` so that they draw the random numbers they draw in one process; the
gradients are summed over the ranks (the loss is a sum over the batch, SPEC §3) before Adam steps on
every rank alike. Rank 0 alone claims the run folder and writes the config, log and checkpoints;
the settings, the data fingerprints and the seed must agree on every rank (checked), the initial
weights are rank 0's (broadcast), and the validation bound, the non-finite check, early stopping
and the CUDA-graph fallback are decided from values reduced across the ranks, the same on every
rank. A run resumes with the same or another number of ranks; a W-rank run equals the 1-rank run
up to summation order (see the module :mod:`bihm_triton.distributed` for what is exact).

**Ctrl-C.** During :meth:`Trainer.fit` a first Ctrl-C (SIGINT) lets the step in progress finish, then
``last.safetensors`` is written at that step, with the position in the epoch (batches done and the
epoch's running sums), and :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) is raised: the
resumed run is the uninterrupted one, step for step. A Ctrl-C outside a step (validation, data
indexing) stops at once, the same way; a second Ctrl-C stops at once without saving (the last
checkpoint is left as it was). A run folder stopped before its first checkpoint (``config.json``
alone) is started from its config by :meth:`Trainer.resume`. With more than one rank a Ctrl-C (or
torchrun's SIGTERM) stops every rank at once without saving: the run resumes from its last
end-of-epoch checkpoint (the ranks could not agree on a step to save without a collective).

A new trainer never overwrites a run: a folder that already holds one is refused unless
``overwrite=True``. :meth:`Trainer.resume` takes every setting from the run, checks that the data
are the run's (a fingerprint of each split is stored with the run), and rewrites the log from the
checkpoint, so an interruption between a log line and its checkpoint leaves no duplicate epochs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time

import torch
from tqdm.auto import tqdm

from .checkpoint import read_safetensors, save_safetensors_atomic, write_json_atomic
from .distributed import Comm, log_likelihood as _sharded_log_likelihood
from .model import BiHM
from .progress import bar_disable
from .reference._checks import nonfinite_parameters
from .reference.philox import MAX_SEED, STREAM_VERSION, check_seed

__all__ = ["TrainConfig", "Trainer", "TrainingInterrupted"]

_GOLDEN = 0x9E3779B97F4A7C15
#: The largest learning rate: Adam's first step is lr / (1 - β₁) = 10 · lr, which must fit in float32 (3.4e38).
MAX_LR = 3.4e37


@dataclasses.dataclass
class TrainConfig:
    """Training settings; defaults are the authors' (SPEC §3)."""

    k: int = 10  #: importance samples per data point
    batch_size: int = 100
    lr: float = 1e-3  #: Adam learning rate; costs are summed over the batch
    objective: str = "bihm"  #: "bihm" or "rws" (reweighted wake-sleep)
    max_epochs: int = 1000
    patience: int = 10  #: stop after this many epochs without a better validation bound
    valid_k: int = 100  #: importance samples per validation point
    seed: int | None = 0  #: of every random choice; None: drawn when a Trainer starts (then recorded)
    l1reg: float = 0.0  #: the authors' --l1reg: l1 · Σ|W| over every weight matrix, added once per step
    l2reg: float = 0.0  #: the authors' --l2reg: l2 · Σ W² over every weight matrix, added once per step

    def __post_init__(self):
        if self.objective not in ("bihm", "rws"):
            raise ValueError(f"objective must be 'bihm' or 'rws', got {self.objective!r}")
        for name in ("k", "batch_size", "max_epochs", "patience", "valid_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        check_lr(self.lr)
        for name in ("l1reg", "l2reg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if self.seed is not None:
            check_seed(self.seed)


def check_lr(lr, name: str = "lr") -> float:
    """``lr`` is a number in (0, :data:`MAX_LR`] (finite: Adam's first update is 10 · lr in float32); returns it.

    Raises:
        ValueError: anything else, naming ``name`` and the allowed range."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= MAX_LR:
        raise ValueError(f"{name} must be a number in (0, {MAX_LR:g}] (Adam's first step, 10 · lr, must fit in "
                         f"float32), got {lr!r}")
    return float(lr)


RUN_FILES = ("config.json", "last.safetensors", "best.safetensors", "log.jsonl")


def data_fingerprint(x: torch.Tensor | None) -> str | None:
    """SHA-256 (16 hex digits) of a binary data tensor's shape and bits: identifies a training set."""
    import hashlib

    if x is None:
        return None
    bits = (x.detach() != 0).to(torch.uint8).cpu().contiguous().numpy()
    return hashlib.sha256(repr(tuple(x.shape)).encode() + bits.tobytes()).hexdigest()[:16]


def _check_rows(x: torch.Tensor, name: str) -> None:
    if x.shape[0] < 1:
        raise ValueError(f"{name} has no rows: a training run needs at least one data point in it")


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + (step + 1) * _GOLDEN) % MAX_SEED


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


class Trainer:
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

    def _write_config(self) -> None:
        config = {"model": self.model.config(), "train": dataclasses.asdict(self.config), "data": self.fingerprints}
        if self.data_source is not None:
            config["data_source"] = self.data_source
        self.comm.on_main(write_json_atomic, config, os.path.join(self.out_dir, "config.json"))

    # ------------------------------------------------------------------ epochs
    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.config.seed * 7919 + epoch)
        return torch.randperm(self.train_x.shape[0], generator=g)

    def _loss_backward(self, x: torch.Tensor, seed, row_start: int = 0):
        """Loss and backward of this rank's rows of the batch (gradients must be None on entry); an empty
        shard computes nothing (loss 0, no gradients: it contributes zeros to the sum)."""
        cfg = self.config
        # the weight penalty (the authors' --l1reg/--l2reg) is part of the step once in all: rank 0's loss
        penalty = None
        if (cfg.l1reg or cfg.l2reg) and self.comm.is_main:
            penalty = self.model.weight_penalty(cfg.l1reg, cfg.l2reg)
        if x.shape[0] == 0:
            empty = x.new_zeros(0, dtype=self.model.dtype)
            if penalty is not None:
                penalty.backward()
            zero = x.new_zeros((), dtype=self.model.dtype)
            return (zero if penalty is None else penalty.detach()), {"bound": empty, "log_p": empty, "ess": empty}
        loss, stats = self.model.loss(x, cfg.k, cfg.objective, seed=seed, row_start=row_start, validate=False)
        if penalty is not None:
            loss = loss + penalty
        loss.backward()
        return loss.detach(), {k: v.detach() for k, v in stats.items()}

    def _sum_grads_and_step(self) -> None:
        self.comm.sum_grads(self.model.parameters())  # the whole batch's gradient (a sum: see the module doc)
        self.optimizer.step()

    def _loss_and_step(self, x: torch.Tensor, seed, row_start: int = 0):
        """The body of a training step: loss, backward, the gradient sum over the ranks, Adam."""
        loss, stats = self._loss_backward(x, seed, row_start)
        self._sum_grads_and_step()
        return loss, stats

    def _capture(self, batch: int, row_start: int = 0) -> None:
        """Record one step on static buffers in a CUDA graph. The warm-up steps it needs (lazy
        allocations, kernel compilation) are undone in place — parameters and Adam state get their
        values back in the very tensors the graph reads and writes — so the run is the same as
        without a graph, whether or not the capture succeeds."""
        model, opt = self.model, self.optimizer
        params = list(model.parameters())
        saved_params = [p.detach().clone() for p in params]
        saved_state = {p: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
                       for p in params if p in opt.state}
        static_x = torch.zeros(batch, model.sizes[0], device=model.device, dtype=model.dtype)
        static_seed = torch.zeros((), device=model.device, dtype=torch.int64)
        # one rank: the whole step; more: the rank's loss and backward (the gradient sum runs outside)
        body = self._loss_and_step if not self.comm.distributed else self._loss_backward
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    opt.zero_grad(set_to_none=True)
                    body(static_x, static_seed, row_start)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                loss, stats = body(static_x, static_seed, row_start)
            self._graph = (graph, static_x, static_seed, loss, stats)
            # the gradients the graph writes (more ranks: summed after each replay; an eager step in between
            # binds new .grad tensors, so the replay path binds these back before the sum)
            self._graph_grads = [p.grad for p in params]
        finally:
            torch.cuda.synchronize()
            with torch.no_grad():  # undo the warm-up steps, in place
                for p, p0 in zip(params, saved_params):
                    p.copy_(p0)
                for p in params:
                    for k, v in opt.state.get(p, {}).items():
                        if not torch.is_tensor(v):
                            continue
                        old = saved_state.get(p, {}).get(k)
                        if old is None:
                            v.zero_()  # state born in the warm-up: a fresh Adam's (zero moments, step 0)
                        else:
                            v.copy_(old)

    def train_step(self, x: torch.Tensor, *, seed=None, row_start: int = 0) -> dict:
        """One optimizer step on the batch x: the loss of SPEC §3, its backward, and Adam.

        Args:
            x: (B, d_0) binary data on the model's device (not re-checked: the trainer checked its
                data once). With more than one rank: this rank's rows ``[a, b)`` of the global batch
                (possibly none), and ``row_start=a``; every rank calls the step (a collective).
            seed: the step's Philox seed (default: a function of the run's seed and the step).
            row_start: index of x's first row in the global batch (SPEC §5: its random numbers).

        Returns:
            dict of device tensors (no host synchronization): ``loss`` (), and ``bound``, ``log_p``,
            ``ess`` (B,) as :meth:`bihm_triton.model.BiHM.loss` reports them. With a CUDA graph they
            are overwritten by the next step: copy them to keep them.
        """
        if seed is None:
            seed = _step_seed(self.config.seed, self.step)
        if self.cuda_graph and self._graph is None:
            self._try_capture()
        full = (x.shape[0], row_start) == self._graph_shard
        if self.cuda_graph and full and self._graph is not None:
            graph, static_x, static_seed, loss, stats = self._graph
            static_x.copy_(x)
            if isinstance(seed, torch.Tensor):
                static_seed.copy_(seed.reshape(()))
            else:
                static_seed.fill_(int(seed))
            graph.replay()
            if self.comm.distributed:
                for p, g in zip(self.model.parameters(), self._graph_grads):
                    p.grad = g  # the tensors the graph wrote into (not those of an eager step since)
                self._sum_grads_and_step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss, stats = self._loss_and_step(x, seed, row_start)
        self.step += 1
        return {"loss": loss, **stats}

    def _try_capture(self) -> None:
        """Capture the graph of this rank's shard of a full batch, at the first step (on every rank
        alike: the outcome is agreed, so a failure anywhere turns the graph off everywhere). A rank whose
        shard of a full batch is empty (batch size < ranks) has nothing to capture. Skipped when the
        training set is smaller than a batch (no full batch)."""
        rows, row_start = self._graph_shard
        error = None
        if rows and self.train_x.shape[0] >= self.config.batch_size:
            try:
                self._capture(rows, row_start)
            except Exception as e:  # noqa: BLE001 - any capture failure: go on eagerly (state restored)
                error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                self._graph = None
        errors = self.comm.gather_objects(error)
        if any(errors) or self._graph is None:
            if any(errors) and self.comm.is_main:
                where = "" if not self.comm.distributed else \
                    f" on rank {[r for r, e in enumerate(errors) if e][0]}"
                print(f"bihm-triton: CUDA-graph capture of the training step failed{where} "
                      f"({next(e for e in errors if e)}); training without it", flush=True)
            self.cuda_graph = False
            self._graph = None

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

    def _write_epoch(self, record: dict, improved: bool) -> None:
        """The log line and the checkpoints of an epoch (rank 0 alone writes them)."""
        with open(os.path.join(self.out_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if improved:
            self.model.save(os.path.join(self.out_dir, "best.safetensors"))
        self.save_checkpoint(os.path.join(self.out_dir, "last.safetensors"))

    # -------------------------------------------------------------- checkpoints
    def _state(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "best": self.best, "bad_epochs": self.bad_epochs,
                "history": self.history, "train": dataclasses.asdict(self.config), "data": self.fingerprints,
                "position": self.position, "stream_version": STREAM_VERSION}

    def _check_parameters(self, where: str) -> None:
        """Raise FloatingPointError when a parameter holds NaN or a weight ±inf (an update diverged; the loss
        of the step that made them was still finite, so the loss check cannot see it)."""
        bad = nonfinite_parameters(self.model.named_parameters())
        if bad:
            listed = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
            raise FloatingPointError(f"training diverged: {listed} non-finite {where}; the last checkpoint was "
                                     f"left untouched (lr {self.config.lr:g}: a lower learning rate may help)")

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Weights, Adam state and counters in one safetensors file, written atomically.

        Not a collective: with more than one rank, call it on rank 0 (every rank holds the same state);
        :meth:`fit` does.

        Raises:
            FloatingPointError: a parameter is non-finite (NaN, or ±inf in a weight): nothing is written."""
        self._check_parameters("at the checkpoint")
        tensors = dict(self.model.state_dict())
        opt = self.optimizer.state_dict()
        for i, state in opt["state"].items():
            for name, value in state.items():
                tensors[f"trainer.adam.{i}.{name}"] = torch.as_tensor(value).reshape(-1) if name == "step" else value
        save_safetensors_atomic(tensors, path, metadata={"config": json.dumps(self.model.config()),
                                                         "trainer": json.dumps(self._state())})

    @classmethod
    def resume(cls, out_dir: str | os.PathLike, train_x: torch.Tensor, valid_x: torch.Tensor | None = None, *,
               device=None, backend: str = "auto", max_epochs: int | None = None,
               cuda_graph: bool | None = None, process_group=None) -> "Trainer":
        """Continue the run in ``out_dir`` from ``last.safetensors``, exactly as if it had not stopped.

        With more than one rank every rank calls it (they all read the checkpoint; rank 0 rewrites
        the log). The number of ranks may differ from the run's: the checkpoint holds nothing per
        rank, so the run goes on equal to the uninterrupted one up to summation order (exactly with
        the same number of ranks).

        Every setting is the run's own; ``max_epochs`` raises (or lowers) its epoch limit. The data
        must be the run's: their fingerprints (:func:`data_fingerprint`) are checked. The log is
        rewritten from the checkpoint's history (epochs logged after the last checkpoint are dropped:
        they will be trained again). A checkpoint written on Ctrl-C holds the position in the epoch:
        the run goes on from that step.

        A run that stopped before its first checkpoint (``config.json`` alone) starts from its config:
        a new model of its architecture, initialized under ``torch.manual_seed(<the run's seed>)`` as the
        command line initializes its runs (so a ``bihm-triton train`` run is the one it would have been).

        Raises:
            FileNotFoundError: neither a checkpoint nor a run's config.json in out_dir.
            ValueError: the checkpoint does not fit (architecture mismatch, corrupt file), or the
                data are not the run's (the message names the split).
        """
        out_dir = os.fspath(out_dir)
        path = os.path.join(out_dir, "last.safetensors")
        if not os.path.isfile(path):
            config = run_config(out_dir)
            if "model" in config and "train" in config:
                return cls._start_from_config(out_dir, config, train_x, valid_x, device=device, backend=backend,
                                              max_epochs=max_epochs, cuda_graph=cuda_graph,
                                              process_group=process_group)
            raise FileNotFoundError(f"no run to continue in {out_dir}: no checkpoint (last.safetensors) and no "
                                    f"config.json")
        tensors, metadata = read_safetensors(path)
        if "trainer" not in metadata:
            raise ValueError(f"{path} is not a trainer checkpoint (no trainer state in its metadata)")
        state = json.loads(metadata["trainer"])
        if state.get("stream_version", 1) != STREAM_VERSION:
            import warnings

            warnings.warn(f"the run in {out_dir} drew its random numbers from stream version "
                          f"{state.get('stream_version', 1)}; it continues on version {STREAM_VERSION} (SPEC §5), so "
                          f"the continuation is not the one it would have had", RuntimeWarning, stacklevel=2)
        model = BiHM.from_config(json.loads(metadata["config"]), device=device, backend=backend)
        weights = {k: v for k, v in tensors.items() if not k.startswith("trainer.")}
        model.check_compatible(weights)
        model.load_state_dict(weights)
        settings = dict(state["train"], **({} if max_epochs is None else {"max_epochs": max_epochs}))
        trainer = cls(model, train_x, valid_x, TrainConfig(**settings), out_dir=out_dir, cuda_graph=cuda_graph,
                      data_source=run_config(out_dir).get("data_source"), process_group=process_group,
                      _resuming=True)
        for split, fp in (state.get("data") or {}).items():
            if fp is not None and trainer.fingerprints.get(split) != fp:
                raise ValueError(f"the {split} data differ from the run's in {out_dir} (fingerprint "
                                 f"{trainer.fingerprints.get(split)} vs {fp}): resume with the data the run was "
                                 f"trained on, or start a new run")
        opt = trainer.optimizer.state_dict()
        for i, _ in enumerate(model.parameters()):
            prefix = f"trainer.adam.{i}."
            st = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if st:
                st["step"] = st["step"].reshape(())
                opt["state"][i] = {k: v.to(device) if k != "step" else v for k, v in st.items()}
        trainer.optimizer.load_state_dict(opt)
        trainer.epoch, trainer.step = state["epoch"], state["step"]
        trainer.best, trainer.bad_epochs = state["best"], state["bad_epochs"]
        trainer.history = state["history"]
        trainer.position = dict(trainer.position, **state.get("position", {}))  # an epoch stopped by Ctrl-C
        # the log as of the checkpoint: no duplicate epochs after an interruption between the two writes
        trainer.comm.on_main(_write_text_atomic, os.path.join(out_dir, "log.jsonl"),
                             "".join(json.dumps(r) + "\n" for r in trainer.history))
        if max_epochs is not None:
            trainer._write_config()
        return trainer


    @classmethod
    def _start_from_config(cls, out_dir: str, config: dict, train_x, valid_x, *, device, backend, max_epochs,
                           cuda_graph, process_group=None) -> "Trainer":
        """A trainer for a run folder that holds only its config.json (see :meth:`resume`)."""
        settings = dict(config["train"], **({} if max_epochs is None else {"max_epochs": max_epochs}))
        cfg = TrainConfig(**settings)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            model = BiHM.from_config(config["model"], device=device, backend=backend)
        trainer = cls(model, train_x, valid_x, cfg, out_dir=out_dir, cuda_graph=cuda_graph,
                      data_source=config.get("data_source"), _resuming=True, process_group=process_group)
        for split, fp in (config.get("data") or {}).items():
            if fp is not None and trainer.fingerprints.get(split) != fp:
                raise ValueError(f"the {split} data differ from the run's in {out_dir} (fingerprint "
                                 f"{trainer.fingerprints.get(split)} vs {fp}): resume with the data the run was "
                                 f"set up with, or start a new run")
        trainer.comm.on_main(_write_text_atomic, os.path.join(out_dir, "log.jsonl"), "")
        return trainer


def run_config(path: str | os.PathLike) -> dict:
    """The ``config.json`` of a run folder, or of the folder holding a checkpoint file; ``{}`` when
    there is none or it cannot be read (runs from before a field existed simply lack it)."""
    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    try:
        with open(os.path.join(folder, "config.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _write_text_atomic(path: str, text: str) -> None:
    from .checkpoint import _atomic_write

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    _atomic_write(path, write)


def _claim_run_dir(out_dir: str, overwrite: bool) -> None:
    """Make ``out_dir`` a fresh run folder: refuse one that holds a run unless ``overwrite`` (then clear it)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"run folder {out_dir} is an existing file; choose another --out")
    present = [f for f in RUN_FILES if os.path.exists(os.path.join(out_dir, f))]
    if present and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a run ({', '.join(present)}): continue it with --resume "
                              f"(Trainer.resume), replace it with --overwrite (overwrite=True), or choose another "
                              f"--out")
    os.makedirs(out_dir, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"run folder {out_dir} is not writable")
    for f in present:
        os.remove(os.path.join(out_dir, f))
