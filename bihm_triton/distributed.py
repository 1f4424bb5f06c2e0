"""More than one process: data-parallel training and sharded evaluation on ``torch.distributed``.

The library runs on the engine PyTorch users already have: ``torchrun`` (or any initialized
``torch.distributed`` process group), NCCL between GPUs, gloo between CPU processes. Nothing here
starts processes or opens sockets of its own.

**Sharding.** A computation over N rows (data points of a global batch, test points, samples of p
for log Ẑ²) is split into contiguous shards: rank r of W takes rows ``[⌊N·r/W⌋, ⌊N·(r+1)/W⌋)``
(:func:`shard_range`; sizes differ by at most one, and a shard may be empty when N < W). The
random stream is batch-invariant (SPEC §5, stream version 2): a rank computes its rows with
``row_start`` = the index of its first row, so it draws exactly the random numbers those rows get in
a single-process call.

**What is exact and what is not.**

* Exact, bit for bit: the random numbers of every row (and its samples wherever its logits are: a
  shard's matmul may round a logit's last bit differently from the whole batch's, which flips a
  draw about once in 10⁷ elements); which rows each rank computes;
  the per-data-point results gathered from the ranks (the gather copies, it adds nothing); every
  decision made from a reduced value (reductions are all-gathers summed in rank order on every
  rank, so all ranks hold the same bits: early stopping, the non-finite check, the CUDA-graph
  fallback decide the same everywhere); a resumed run with the same number of ranks.
* Equal up to summation order (a few units in the last place per step, in the units of the
  quantity): a per-point estimate whose K importance samples straddle a row chunk differently in
  the shard than in the whole call (the streamed logsumexp merges chunks), log Ẑ² and its standard
  error (sums of exp-terms over the shards), the training gradients (the shards' gradients are
  summed across ranks instead of inside one backward), and therefore the parameters of a W-rank
  run against a 1-rank run with the same global batch and seed, and a run resumed with another
  number of ranks. In float64 the difference after a few Adam steps is far below 10⁻⁶ learning
  rates (``tests/test_distributed.py`` measures it).

**Gradients are summed, not averaged.** The training loss of SPEC §3 is a sum over the batch
(the authors' cost, which their learning rate was tuned for), and :meth:`BiHM.loss` on the rows
``[a, b)`` of a batch with ``row_start=a`` is that batch's loss restricted to those rows. The sum
of the ranks' gradients is therefore the gradient of the whole batch's loss, the one a single
process computes; averaging (what ``DistributedDataParallel`` does, as it assumes a mean loss)
would divide it by W. The model has no ``forward()``, so DDP does not apply anyway: the trainer
all-reduces the flattened gradients with one ``torch.distributed`` collective per step.

Functions: :func:`shard_range`, :func:`log_likelihood`, :func:`effective_sample_size`,
:func:`estimate_log_z2`; :class:`Comm` (the collectives the trainer uses); :func:`launch_from_env`
(what the command line does under ``torchrun``).
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle

import torch

from .reference.bihm import EffectiveSampleSize, LogLikelihood
from .reference.estimators import MeanWithSE
from .reference.philox import draw_seed

__all__ = ["Comm", "shard_range", "log_likelihood", "effective_sample_size", "estimate_log_z2", "launch_from_env",
           "local_device", "torchrun_world_size"]


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[a, b)`` of ``n`` that rank ``rank`` of ``world_size`` takes: ``a = ⌊n·rank/W⌋``,
    ``b = ⌊n·(rank+1)/W⌋`` (contiguous, in rank order, sizes differing by at most one; empty when
    ``n < W`` for some ranks).

    Raises:
        ValueError: n < 0, world_size < 1, or rank outside ``[0, world_size)``.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size) = [0, {world_size}), got {rank}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return n * rank // world_size, n * (rank + 1) // world_size


def torchrun_world_size() -> int:
    """``WORLD_SIZE`` as ``torchrun`` sets it (1 when the variable is absent or not an integer)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


class Comm:
    """The process group a computation is sharded over, and the few collectives the library needs.

    Args:
        process_group: ``None`` (default): the default group when ``torch.distributed`` is
            initialized, else this process alone; ``False``: this process alone even inside an
            initialized group; or a ``torch.distributed.ProcessGroup`` this process belongs to.

    With one process every method is the identity (no ``torch.distributed`` call), so the
    single-process code path is the one it always was.

    Every method except :attr:`rank`, :attr:`world_size`, :attr:`is_main` and :meth:`shard` is a
    collective: every rank of the group must call it, in the same order.
    """

    def __init__(self, process_group=None):
        import torch.distributed as dist

        self.group = None
        self.rank, self.world_size = 0, 1
        self.device = torch.device("cpu")  #: where collectives run: the current CUDA device for NCCL
        if process_group is False:
            return
        if process_group is None and not (dist.is_available() and dist.is_initialized()):
            return
        if process_group is not None and not (dist.is_available() and dist.is_initialized()):
            raise ValueError("process_group was given but torch.distributed is not initialized: call "
                             "torch.distributed.init_process_group first (torchrun sets up its environment), "
                             "or pass process_group=None for a single process")
        self.group = process_group  # None: the default group
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        if self.rank < 0:
            raise ValueError("this process is not a member of the process_group it was given")
        backend = str(dist.get_backend(self.group)).lower()
        self.device = (torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend
                       else torch.device("cpu"))
        self._src = dist.get_global_rank(self.group, 0) if self.group is not None else 0

    def __repr__(self) -> str:
        return f"Comm(rank={self.rank}, world_size={self.world_size})"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's rows ``[a, b)`` of ``n`` (:func:`shard_range`)."""
        return shard_range(n, self.rank, self.world_size)

    # ------------------------------------------------------------------ collectives
    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """(W, *t.shape) of every rank's ``t`` (same shape and dtype on every rank), on t's device."""
        import torch.distributed as dist

        src = t.detach().to(self.device).contiguous()
        parts = [torch.empty_like(src) for _ in range(self.world_size)]
        dist.all_gather(parts, src, group=self.group)
        return torch.stack(parts).to(t.device)

    def gather_objects(self, obj) -> list:
        """Every rank's picklable ``obj``, in rank order (one-element list with one process)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def broadcast_object(self, obj):
        """Rank 0's picklable ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=self._src, group=self.group)
        return box[0]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise sum of every rank's ``t`` (same shape on every rank), added in rank order in
        float64 on the CPU: the same bits on every rank (a host synchronization)."""
        t = t.detach()
        if not self.distributed:
            return t.double().cpu()
        g = self._gather(t.double()).cpu()
        total = g[0].clone()
        for part in g[1:]:
            total += part
        return total

    def first_step(self, first_bad: torch.Tensor) -> int:
        """The smallest non-negative value of every rank's ``first_bad`` (a step number, −1 for none);
        −1 when every rank has −1."""
        values = [int(v) for v in self._gather(first_bad.reshape(1).to(torch.int64)).reshape(-1)] \
            if self.distributed else [int(first_bad)]
        hits = [v for v in values if v >= 0]
        return min(hits) if hits else -1

    def all_true(self, flag: bool) -> bool:
        """True iff ``flag`` is true on every rank."""
        return all(bool(f) for f in self.gather_objects(bool(flag)))

    def gather_rows(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """Concatenate every rank's shard ``t`` ((b − a, *) rows ``[a, b)`` of :meth:`shard` (n)) into
        the (n, *) whole, on every rank: a copy (exact), on t's device and in t's dtype."""
        if not self.distributed:
            return t
        width = -(-n // self.world_size)  # the largest shard
        pad = t.new_zeros((width, *t.shape[1:]))
        pad[:t.shape[0]] = t
        parts = self._gather(pad)
        return torch.cat([parts[r, :b - a] for r, (a, b) in
                          enumerate(shard_range(n, r, self.world_size) for r in range(self.world_size))])

    @torch.no_grad()
    def sum_grads(self, params) -> None:
        """Replace every parameter's ``.grad`` by the sum over the ranks (one all-reduce of the flattened
        gradients). A rank without a gradient for a parameter (an empty shard) contributes zeros; a
        parameter no rank has a gradient for keeps ``grad = None`` (Adam then skips it, as one
        process would)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        params = [p for p in params if p.requires_grad]
        if not params:
            return
        dev, dtype = params[0].device, params[0].dtype
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
                          for p in params]
                         + [torch.tensor([float(p.grad is not None) for p in params], dtype=dtype, device=dev)])
        flat = flat.to(self.device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        flat = flat.to(dev)
        local = [p.grad is not None for p in params]
        # a rank holding every gradient knows they all exist: no read-back (no host synchronization)
        present = local if all(local) else (flat[-len(params):] > 0).tolist()
        i = 0
        for p, has in zip(params, present):
            n = p.numel()
            g = flat[i:i + n].view_as(p).to(p.dtype)
            i += n
            if not has:
                p.grad = None
            elif p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)

    @torch.no_grad()
    def broadcast_tensors(self, tensors) -> None:
        """Overwrite ``tensors`` in place with rank 0's values (one broadcast each)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for t in tensors:
            buf = t.detach().to(self.device).clone()
            dist.broadcast(buf, src=self._src, group=self.group)
            t.copy_(buf.to(t.device))

    def checked(self, fn, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` on every rank, then raise on every rank if it raised on any: the
        rank's own exception where it failed, elsewhere the first failing rank's (same type, its rank
        named), so no rank goes on to wait forever in a collective for one that failed."""
        error = None
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
        if not self.distributed:
            if error is not None:
                raise error
            return result
        errors = self.gather_objects(None if error is None else _portable(error))
        if error is not None:
            raise error
        for r, payload in enumerate(errors):
            if payload is not None:
                raise _on_rank(pickle.loads(payload), r)
        return result

    def on_main(self, fn, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` on rank 0 alone (files, prints) and raise its exception, if any,
        on every rank (:meth:`checked`). Returns fn's result on rank 0, None elsewhere."""
        return self.checked(lambda: fn(*args, **kwargs) if self.is_main else None)

    def agree(self, what: str, value, seed=...):
        """Raise ValueError on every rank unless every rank holds the same picklable ``value``, naming
        ``what`` and the ranks that differ from rank 0.

        With ``seed`` (an int, a one-element int64 tensor or None) also return one seed for every
        rank: rank 0's draw when every rank passes None (torch's generator on rank 0, as one process
        would draw it), else the seed every rank passed; ValueError when they differ.
        """
        if isinstance(seed, torch.Tensor):
            seed = int(seed.reshape(()).item())
        drawn = draw_seed() if seed is None and self.is_main else None
        values = self.gather_objects((value, seed, drawn))
        differ = [r for r, v in enumerate(values) if v[0] != values[0][0]]
        if differ:
            raise ValueError(f"{what} differ between the ranks of the process group: rank 0 has {values[0][0]!r}, "
                             + "; ".join(f"rank {r} has {values[r][0]!r}" for r in differ[:3])
                             + " (every rank must make the same call, with the same settings and data)")
        seeds = [v[1] for v in values]
        if any(s != seeds[0] for s in seeds):
            raise ValueError(f"seed differs between the ranks ({seeds[:4]}): pass the same seed on every rank, "
                             f"or seed=None on every rank (rank 0 then draws one for all)")
        return values[0][2] if seeds[0] is None else seeds[0]


def _portable(error: Exception) -> bytes:
    """A pickled exception that unpickles (else a RuntimeError with its type and message)."""
    try:
        payload = pickle.dumps(error)
        pickle.loads(payload)
        return payload
    except Exception:  # noqa: BLE001
        return pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))


def _on_rank(error: Exception, rank: int) -> Exception:
    """``error`` of another rank, its message prefixed with the rank (same type where it can be rebuilt)."""
    if rank == 0:
        return error  # rank 0's errors are the run's (files, settings): no prefix
    try:
        return type(error)(f"on rank {rank}: {error}")
    except Exception:  # noqa: BLE001 - exception types with other constructors
        return error


# ------------------------------------------------------------------------ evaluation


def _comm(process_group) -> Comm:
    return process_group if isinstance(process_group, Comm) else Comm(process_group)


def _per_point(comm: Comm, what: str, model, x, k, seed, offset, row_start, progress, settings, compute):
    """The sharded per-data-point estimators: check that every rank makes the same call, agree on
    one seed, compute this rank's shard (``compute(x_shard, seed, row_start, progress)`` → (b − a, c)),
    and gather the (B, c) whole on every rank."""
    from .reference._checks import check_positive_int

    x = model._check_x(x)  # every rank checks all of x: a bad point fails on every rank alike
    check_positive_int(k, "k")
    seed = comm.agree(f"{what} arguments (x's shape, k, offset, row_start, ...)",
                      (tuple(x.shape), k, offset, row_start, *settings), seed)
    a, b = comm.shard(x.shape[0])
    part = comm.checked(lambda: compute(x[a:b], seed, row_start + a, progress if comm.is_main else False)
                        if b > a else None)
    if part is None:
        part = torch.zeros(0, 2, dtype=model.dtype, device=model.device)
    return comm.gather_rows(part, x.shape[0])


def log_likelihood(model, x: torch.Tensor, k: int, *, log_z2: float | None = None, seed=None, offset: int = 0,
                   row_start: int = 0, progress: bool | None = None, process_group=None) -> LogLikelihood:
    """:meth:`BiHM.log_likelihood` of many test points, split across the ranks (SPEC §2).

    Every rank passes the same (B, d_0) ``x`` (and the same k, seed, offset, row_start); rank r
    estimates its shard of the points (``row_start`` + the shard's first index, so each point gets
    the importance samples it gets in one process) and the results are gathered: every rank returns
    the per-point estimates of all B points, equal to the single-process call with the same seed
    (bit for bit unless a point's K samples straddle a chunk of ``model.chunk_rows`` rows
    differently, then up to summation order). With one process it is ``model.log_likelihood``.

    Args:
        model: a :class:`~bihm_triton.model.BiHM` (the same weights on every rank).
        x, k, log_z2, seed, offset, row_start, progress: as :meth:`BiHM.log_likelihood`; ``seed=None``
            is drawn on rank 0 and broadcast. The progress bar shows on rank 0 only.
        process_group: see :class:`Comm` (default: the initialized default group, else one process).

    Returns:
        :class:`~bihm_triton.reference.LogLikelihood` of (B,) tensors in nats (model dtype and
        device), on every rank.

    Raises:
        ValueError: the ranks passed different shapes, k, offset, row_start, log_z2 or seeds; whatever
            :meth:`BiHM.log_likelihood` raises for its arguments (on every rank).
    """
    comm = _comm(process_group)
    if not comm.distributed:
        return model.log_likelihood(x, k, log_z2=log_z2, seed=seed, offset=offset, row_start=row_start,
                                    progress=progress)

    def compute(xs, seed_, r0, bar):
        ll = model.log_likelihood(xs, k, seed=seed_, offset=offset, row_start=r0, progress=bar)
        return torch.stack([ll.log_p_tilde_star, ll.log_p], dim=1)

    both = _per_point(comm, "log_likelihood", model, x, k, seed, offset, row_start, progress, (log_z2,), compute)
    lpt, lp = both[:, 0].contiguous(), both[:, 1].contiguous()
    return LogLikelihood(lpt, lp, None if log_z2 is None else lpt - log_z2)


def effective_sample_size(model, x: torch.Tensor, k: int, *, seed=None, offset: int = 0, row_start: int = 0,
                          progress: bool | None = None, process_group=None) -> EffectiveSampleSize:
    """:meth:`BiHM.effective_sample_size` of many points, split across the ranks like
    :func:`log_likelihood` (same arguments, same exactness, same errors); every rank returns the
    :class:`~bihm_triton.reference.EffectiveSampleSize` (B,) of the p- and p*-weights of all points."""
    comm = _comm(process_group)
    if not comm.distributed:
        return model.effective_sample_size(x, k, seed=seed, offset=offset, row_start=row_start, progress=progress)

    def compute(xs, seed_, r0, bar):
        e = model.effective_sample_size(xs, k, seed=seed_, offset=offset, row_start=r0, progress=bar)
        return torch.stack([e.p, e.p_star], dim=1)

    both = _per_point(comm, "effective_sample_size", model, x, k, seed, offset, row_start, progress, (), compute)
    return EffectiveSampleSize(both[:, 0].contiguous(), both[:, 1].contiguous())


@torch.no_grad()
def estimate_log_z2(model, n_samples: int, *, n_inner: int = 1, seed=None, offset: int = 0, row_start: int = 0,
                    progress: bool | None = None, process_group=None) -> MeanWithSE:
    """:meth:`BiHM.estimate_log_z2` with the ``n_samples`` draws of p split across the ranks (SPEC §2).

    Rank r computes the log Ẑ² terms of samples ``row_start + [a, b)`` (its shard), exactly the terms
    those samples have in one process; the mean and the standard error are then reduced from sums
    over the ranks (the maximum term, then Σ e, then Σ (e − mean)², with e = exp(term − max): the
    two-pass formula of :func:`~bihm_triton.reference.log_mean_exp_with_se`), so every rank returns
    the single-process (log Ẑ², se) up to summation order. Memory per rank: its N/W terms.

    Args:
        model, n_samples (>= 2), n_inner, seed, offset, row_start, progress: as
            :meth:`BiHM.estimate_log_z2`; ``seed=None`` is drawn on rank 0 and broadcast; the
            progress bar shows on rank 0 only.
        process_group: see :class:`Comm`.

    Returns:
        :class:`~bihm_triton.reference.MeanWithSE` of Python floats (nats), the same on every rank;
        ``(-inf, inf)`` when every term is 0, NaN when a term is NaN (as one process).

    Raises:
        ValueError: the ranks passed different arguments or seeds; n_samples < 2, n_inner < 1.
    """
    from .reference._checks import check_positive_int

    comm = _comm(process_group)
    if not comm.distributed:
        return model.estimate_log_z2(n_samples, n_inner=n_inner, seed=seed, offset=offset, row_start=row_start,
                                     progress=progress)
    check_positive_int(n_samples, "n_samples", 2)
    check_positive_int(n_inner, "n_inner")
    seed = comm.agree("estimate_log_z2 arguments (n_samples, n_inner, offset, row_start)",
                      (n_samples, n_inner, offset, row_start), seed)
    a, b = comm.shard(n_samples)
    bar = progress if comm.is_main else False

    def terms():
        s = model._seed(seed, offset, row_start + a)
        chunk = max(4, (model.chunk_rows // n_inner) // 4 * 4)
        out = [torch.zeros(0, dtype=torch.float64, device=model.device)]
        for r0 in (model._chunks(b - a, chunk, bar, "log Z^2") if b > a else ()):
            n = min(chunk, b - a - r0)
            out.append(model._log_z2_terms(n, n_inner, s, offset, row_start=row_start + a + r0).double())
        return torch.cat(out)

    t = comm.checked(terms)
    local_max = t.max() if t.numel() else torch.tensor(-math.inf, dtype=torch.float64, device=t.device)
    flags = comm._gather(torch.stack([torch.isnan(t).any().double(), local_max])).cpu()  # (W, 2)
    if bool(flags[:, 0].any()):
        return MeanWithSE(math.nan, math.nan)
    shift = flags[:, 1].max()
    if not bool(torch.isfinite(shift)):  # every term 0 (-inf): the mean is 0; +inf: infinite
        return MeanWithSE(float(shift), math.inf)
    e = torch.exp(t - shift.to(t.device))
    m = comm.sum(e.sum().reshape(1))[0] / n_samples
    ss = comm.sum(((e - m.to(e.device)) ** 2).sum().reshape(1))[0]
    s = torch.sqrt(ss / (n_samples - 1))
    return MeanWithSE(float(shift + torch.log(m)), float(s / (m * math.sqrt(n_samples))))


# ------------------------------------------------------------------------ launching


@contextlib.contextmanager
def launch_from_env(device: str | None = None):
    """Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment, no group initialized yet): initialize
    the default process group from torchrun's variables — NCCL for a CUDA device (each process on
    ``cuda:$LOCAL_RANK``), gloo for the CPU — and destroy it on exit. Yields a :class:`Comm` (one
    process when not launched by torchrun, or when the caller already initialized a group, which is
    then used and left alone).

    Args:
        device: the device the command was asked for (``None``: CUDA when available).
    """
    import torch.distributed as dist

    created = False
    if torchrun_world_size() > 1 and dist.is_available() and not dist.is_initialized():
        want_cuda = (device is None and torch.cuda.is_available()) or (device is not None
                                                                       and torch.device(device).type == "cuda")
        if want_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if want_cuda else "gloo")
        created = True
    try:
        yield Comm()
    except BaseException:
        if created and dist.is_initialized():
            dist.destroy_process_group()
        raise
    if created and dist.is_initialized():
        dist.barrier()  # every rank done with its collectives before any tears the group down: a rank that
        dist.destroy_process_group()  # left first made gloo's threads of the other abort it (SIGABRT) at exit


def local_device(dev: torch.device) -> torch.device:
    """Under ``torchrun``, a bare ``cuda`` device becomes ``cuda:$LOCAL_RANK`` (each process its GPU)."""
    if dev.type == "cuda" and dev.index is None and torchrun_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev
