"""Running code on several gloo processes in the tests (importable as ``dist_workers``: pytest puts
tests/ on sys.path, and spawned processes inherit it).

:func:`spawn` starts ``world`` processes with :func:`torch.multiprocessing.spawn`, each with one CPU
thread and a gloo process group on a free TCP port of 127.0.0.1, runs ``fn(rank, *args)`` in each
and returns their results (``torch.save``-able), rank by rank. The scenario functions below run
inside those processes; ``tests/test_distributed.py`` checks their results against one process.
"""

from __future__ import annotations

import os
import shutil
import socket
from datetime import timedelta

import torch

#: A gloo operation that waits longer than this fails instead of hanging the test suite.
TIMEOUT_S = 90


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out_dir: str, fn, args) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    # what torchrun sets (the command line reads them); the group itself is created here
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=TIMEOUT_S))
    try:
        result = fn(rank, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def spawn(fn, world: int, *args, out_dir: str) -> list:
    """``[fn(0, *args), …, fn(world − 1, *args)]``, each computed in its own gloo process."""
    import torch.multiprocessing as mp

    os.makedirs(out_dir, exist_ok=True)
    mp.spawn(_entry, args=(world, free_port(), out_dir, fn, args), nprocs=world, join=True)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


# ------------------------------------------------------------------------------ the setup


def train_model(seed: int = 0):
    """The training tests' model: float64, reference backend, small."""
    from bihm_triton.model import BiHM

    torch.manual_seed(seed)
    return BiHM([64, 12, 6], dtype=torch.float64, backend="reference")


def train_config(**kw):
    """101 training points in batches of 20: shards of 10 and 10, and a last batch of one point, whose
    shard is empty on rank 0 of 2. 31 validation points: shards of 15 and 16."""
    from bihm_triton.train import TrainConfig

    return TrainConfig(**{**dict(k=4, batch_size=20, lr=3e-3, max_epochs=2, valid_k=5, seed=3), **kw})


def snapshot(trainer) -> dict:
    """What a run ends with: parameters, Adam state, counters and history (CPU copies)."""
    state = trainer.optimizer.state_dict()["state"]
    return {"params": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            "adam": {i: {k: v.detach().clone() for k, v in s.items()} for i, s in state.items()},
            "epoch": trainer.epoch, "step": trainer.step, "history": [dict(r, seconds=0) for r in trainer.history]}


def eval_model():
    """The evaluation tests' model: random float64 weights far from the init, row chunks of 24."""
    from helpers import random_model

    from bihm_triton.model import BiHM

    return random_model([64, 10, 5], seed=1, scale=0.7, cls=BiHM, backend="reference", chunk_rows=24)


def _fake_capture(counter: dict):
    """A stand-in for ``Trainer._capture`` on the CPU: a "graph" whose replay runs the captured body
    eagerly on the static buffers, so the trainer's graph path (keyed on the shard, the gradient sum
    after the replay, the agreed fallback) runs without CUDA."""

    def capture(self, batch: int, row_start: int = 0) -> None:
        m = self.model
        static_x = torch.zeros(batch, m.sizes[0], dtype=m.dtype)
        static_seed = torch.zeros((), dtype=torch.int64)
        loss = torch.zeros((), dtype=m.dtype)
        stats = {k: torch.zeros(batch, dtype=m.dtype) for k in ("bound", "log_p", "ess")}
        body = self._loss_and_step if not self.comm.distributed else self._loss_backward
        trainer = self
        params = list(m.parameters())
        grads = [torch.zeros_like(p) for p in params]  # like a real graph: the replays write into fixed tensors

        class Graph:
            def replay(self_):
                counter["replays"] += 1
                trainer.optimizer.zero_grad(set_to_none=True)
                out_loss, out_stats = body(static_x, static_seed, row_start)
                loss.copy_(out_loss)
                for k in stats:
                    stats[k].copy_(out_stats[k])
                for g, p in zip(grads, params):
                    g.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
                    p.grad = None  # (a real replay leaves .grad bound to whatever it was)

        counter["captured"] = (batch, row_start)
        self._graph = (Graph(), static_x, static_seed, loss, stats)
        self._graph_grads = grads

    return capture


# ------------------------------------------------------------------------------ scenarios


def training_scenarios(rank: int, data: dict, tmp: str) -> dict:
    """Everything the training tests check, in one set of processes (starting processes is the slow part)."""
    from bihm_triton.train import Trainer

    import torch.distributed as dist

    x, v = data["train"], data["valid"]
    out = {}
    # A: 2 epochs straight; rank 1 starts from other weights (the trainer broadcasts rank 0's)
    t = Trainer(train_model(seed=rank), x, v, train_config(), out_dir=os.path.join(tmp, "A"))
    t.fit(progress=False, verbose=False)
    out["A"] = snapshot(t)
    # B: stopped after epoch 1 (its folder copied for a 1-rank resume), resumed on 2 ranks
    t = Trainer(train_model(), x, v, train_config(), out_dir=os.path.join(tmp, "B"))
    t.fit(1, progress=False, verbose=False)
    if rank == 0:
        shutil.copytree(os.path.join(tmp, "B"), os.path.join(tmp, "B_for_one"))
    dist.barrier()
    t = Trainer.resume(os.path.join(tmp, "B"), x, v)
    t.fit(progress=False, verbose=False)
    out["B"] = snapshot(t)
    # C: a 1-rank run's epoch-1 checkpoint (written by the test beforehand), resumed on 2 ranks
    t = Trainer.resume(os.path.join(tmp, "C"), x, v)
    t.fit(progress=False, verbose=False)
    out["C"] = snapshot(t)
    # the CUDA-graph path with a stand-in graph: captured on both ranks / failing on rank 1 only
    for name, fail_on in (("graph", None), ("graph_fails", 1)):
        counter = {"replays": 0, "captured": None}
        t = Trainer(train_model(), x, v, train_config())
        t.cuda_graph = True
        if fail_on == rank:
            def failing(self, batch, row_start=0):
                raise RuntimeError("capture refused (test)")
            t._capture = failing.__get__(t)
        else:
            t._capture = _fake_capture(counter).__get__(t)
        t.fit(progress=False, verbose=False)
        out[name] = dict(snapshot(t), cuda_graph=t.cuda_graph, **counter)
    # seed=None: rank 0's draw for every rank (each rank's generator in another state)
    model = train_model()
    torch.manual_seed(100 + rank)
    out["drawn_seed"] = Trainer(model, x, v, train_config(seed=None)).config.seed
    # refusals, on every rank alike
    errors = {}
    try:
        Trainer(train_model(), x, v, train_config(seed=rank))
    except ValueError as e:
        errors["seed"] = str(e)
    try:
        Trainer(train_model(), x, v, train_config(), out_dir=os.path.join(tmp, "A"))
    except FileExistsError as e:
        errors["claim"] = str(e)
    try:
        Trainer(train_model(), x, v, train_config(lr=1e-3 * (1 + rank)))
    except ValueError as e:
        errors["settings"] = str(e)
    try:
        Trainer(train_model(), x[rank:], v, train_config())
    except ValueError as e:
        errors["data"] = str(e)
    out["errors"] = errors
    return out


def eval_scenarios(rank: int, data: dict) -> dict:
    """The sharded estimators on 2 ranks: seed=None draws (torch.manual_seed(5) on both), fixed seeds,
    row_start, and a seed that differs between the ranks."""
    from bihm_triton import distributed

    model = eval_model()
    x = data["test"]
    out = {}
    torch.manual_seed(5)
    out["ll"] = distributed.log_likelihood(model, x, 7, log_z2=-0.25, seed=None)
    out["ll_aligned"] = distributed.log_likelihood(model, x, 8, seed=11, row_start=3)
    out["ess"] = distributed.effective_sample_size(model, x, 7, seed=12)
    out["z"] = distributed.estimate_log_z2(model, 101, n_inner=3, seed=13)
    out["z_small"] = distributed.estimate_log_z2(model, 3, seed=14, row_start=5)  # a 1-sample shard
    try:
        distributed.log_likelihood(model, x, 7, seed=rank)
    except ValueError as e:
        out["seed_error"] = str(e)
    try:
        distributed.log_likelihood(model, x[: 10 + rank], 7, seed=1)
    except ValueError as e:
        out["shape_error"] = str(e)
    return out


def write_idx(path: str, x: torch.Tensor) -> str:
    """Binary 8x8 images x (n, 64) as an MNIST IDX image file (0 or 255): ``--data idx:<path>`` reads them
    back without importing scikit-learn (seconds per process)."""
    import numpy as np

    images = (x.reshape(-1, 8, 8).numpy() * 255).astype(np.uint8)
    with open(path, "wb") as f:
        f.write(np.array([2051, *images.shape], dtype=">u4").tobytes())
        f.write(images.tobytes())
    return path


def cli_train_args(idx: str) -> list[str]:
    """``bihm-triton train`` arguments of the command-line runs: the 8x8 digits of the IDX file ``idx``
    (70 % of 1,797: 1,257 training points), 3 epochs of 63 steps."""
    return ["train", "--data", f"idx:{idx}", "--sizes", "16,8", "--epochs", "3", "--batch-size", "20",
            "--valid-k", "5", "--no-progress"]


def cli_scenario(rank: int, tmp: str, idx: str) -> tuple:
    """``bihm-triton train`` on 2 ranks, uninterrupted, into tmp/cli_U (in the group these processes
    set up, as under torchrun): the reference of the killed-and-resumed torchrun run. Then the same
    command again, refused (the folder holds a run) on every rank."""
    from bihm_triton.cli import main

    first = main([*cli_train_args(idx), "--out", os.path.join(tmp, "cli_U")])
    again = main([*cli_train_args(idx), "--out", os.path.join(tmp, "cli_U")])
    return first, again


def all_scenarios(rank: int, data: dict, tmp: str) -> dict:
    """Training, evaluation and command-line scenarios in one set of processes."""
    return {"train": training_scenarios(rank, data, tmp), "eval": eval_scenarios(rank, data),
            "cli": cli_scenario(rank, tmp, data["idx"])}
