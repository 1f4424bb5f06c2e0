"""Training with the authors' defaults (SPEC §3): Adam, K = 10, batch 100, early stopping on the validation bound.

A run lives in one directory:

* ``config.json`` — the model architecture and the training settings;
* ``last.safetensors`` — weights, Adam state and the trainer's counters (metadata), rewritten
  atomically after every epoch: an interrupted save leaves the previous one intact;
* ``best.safetensors`` — the weights with the best validation bound so far (:meth:`BiHM.load` reads it);
* ``log.jsonl`` — one JSON object per epoch (train and validation bounds, ESS, time).

Every random choice is a function of ``(seed, epoch, step)``: the shuffling of epoch e and the
Philox seed of step t; so :meth:`Trainer.resume` continues a run exactly as if it had not stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import torch
from tqdm.auto import tqdm

from .checkpoint import read_safetensors, save_safetensors_atomic, write_json_atomic
from .model import BiHM
from .reference.philox import MAX_SEED

__all__ = ["TrainConfig", "Trainer"]

_GOLDEN = 0x9E3779B97F4A7C15


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
    seed: int = 0

    def __post_init__(self):
        if self.objective not in ("bihm", "rws"):
            raise ValueError(f"objective must be 'bihm' or 'rws', got {self.objective!r}")
        for name in ("k", "batch_size", "max_epochs", "patience", "valid_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + (step + 1) * _GOLDEN) % MAX_SEED


class Trainer:
    """Train a :class:`~bihm_triton.model.BiHM` on binary data (SPEC §3).

    Args:
        model: the model (its device is where the batches go).
        train_x: (n, d_0) binary training data; valid_x: (m, d_0) validation data or None (then
            the training bound drives early stopping).
        config: :class:`TrainConfig`.
        out_dir: run directory for config, checkpoints and the log; None keeps nothing on disk.

    Raises:
        ValueError: data of the wrong width or not binary, bad settings.
    """

    def __init__(self, model: BiHM, train_x: torch.Tensor, valid_x: torch.Tensor | None = None,
                 config: TrainConfig | None = None, out_dir: str | os.PathLike | None = None):
        self.model = model
        self.config = config or TrainConfig()
        self.train_x = model._check_x(train_x, "train_x")
        self.valid_x = None if valid_x is None else model._check_x(valid_x, "valid_x")
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.config.lr)
        self.epoch = 0
        self.step = 0
        self.best = -math.inf
        self.bad_epochs = 0
        self.history: list[dict] = []
        if self.out_dir is not None:
            os.makedirs(self.out_dir, exist_ok=True)
            write_json_atomic({"model": model.config(), "train": dataclasses.asdict(self.config)},
                              os.path.join(self.out_dir, "config.json"))

    # ------------------------------------------------------------------ epochs
    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.config.seed * 7919 + epoch)
        return torch.randperm(self.train_x.shape[0], generator=g)

    def train_epoch(self, progress: bool = True) -> dict:
        """One pass over the training data; returns the epoch's mean bound and ESS."""
        cfg = self.config
        perm = self._permutation(self.epoch).to(self.train_x.device)
        n = self.train_x.shape[0]
        total_bound, total_ess, seen = 0.0, 0.0, 0
        bar = tqdm(range(0, n, cfg.batch_size), desc=f"epoch {self.epoch + 1}", disable=not progress, leave=False)
        for start in bar:
            xb = self.train_x[perm[start:start + cfg.batch_size]]
            loss, stats = self.model.loss(xb, cfg.k, cfg.objective, seed=_step_seed(cfg.seed, self.step))
            loss_value = loss.detach()
            if not torch.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value.item()} at epoch {self.epoch + 1}, step {self.step}; "
                                         f"the last checkpoint was left untouched")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            b = xb.shape[0]
            total_bound += stats["bound"] * b
            total_ess += stats["ess"] * b
            seen += b
            bar.set_postfix(bound=f"{total_bound / seen:.2f}")
        return {"train_bound": total_bound / seen, "train_ess": total_ess / seen}

    @torch.no_grad()
    def validate(self, progress: bool = False) -> float:
        """Mean log p̃*(x) estimate (nats) over the validation data with ``valid_k`` samples (fixed seed)."""
        x = self.valid_x if self.valid_x is not None else self.train_x
        ll = self.model.log_likelihood(x, self.config.valid_k, seed=_step_seed(self.config.seed, -2),
                                       progress=progress)
        return float(ll.log_p_tilde_star.mean())

    def fit(self, epochs: int | None = None, *, progress: bool = True, verbose: bool = True) -> list[dict]:
        """Train until early stopping, ``max_epochs``, or ``epochs`` more epochs; returns the log records.

        Each epoch appends a record (epoch, step, train_bound, train_ess, valid_bound, seconds) to
        ``history`` and ``log.jsonl`` and writes the checkpoints.
        """
        cfg = self.config
        stop_at = cfg.max_epochs if epochs is None else min(cfg.max_epochs, self.epoch + epochs)
        while self.epoch < stop_at and self.bad_epochs < cfg.patience:
            t0 = time.perf_counter()
            record = {"epoch": self.epoch + 1, **self.train_epoch(progress)}
            self.epoch += 1
            record["valid_bound"] = self.validate()
            record["step"] = self.step
            record["seconds"] = round(time.perf_counter() - t0, 3)
            improved = record["valid_bound"] > self.best
            if improved:
                self.best, self.bad_epochs = record["valid_bound"], 0
            else:
                self.bad_epochs += 1
            self.history.append(record)
            if verbose:
                print(f"epoch {record['epoch']:4d}  train bound {record['train_bound']:9.3f}  "
                      f"valid bound {record['valid_bound']:9.3f}  ESS {record['train_ess']:5.2f}/{cfg.k}  "
                      f"{record['seconds']:.1f}s{'  *' if improved else ''}", flush=True)
            if self.out_dir is not None:
                with open(os.path.join(self.out_dir, "log.jsonl"), "a") as f:
                    f.write(json.dumps(record) + "\n")
                if improved:
                    self.model.save(os.path.join(self.out_dir, "best.safetensors"))
                self.save_checkpoint(os.path.join(self.out_dir, "last.safetensors"))
        return self.history

    # -------------------------------------------------------------- checkpoints
    def _state(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "best": self.best, "bad_epochs": self.bad_epochs,
                "history": self.history, "train": dataclasses.asdict(self.config)}

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Weights, Adam state and counters in one safetensors file, written atomically."""
        tensors = dict(self.model.state_dict())
        opt = self.optimizer.state_dict()
        for i, state in opt["state"].items():
            for name, value in state.items():
                tensors[f"trainer.adam.{i}.{name}"] = torch.as_tensor(value).reshape(-1) if name == "step" else value
        save_safetensors_atomic(tensors, path, metadata={"config": json.dumps(self.model.config()),
                                                         "trainer": json.dumps(self._state())})

    @classmethod
    def resume(cls, out_dir: str | os.PathLike, train_x: torch.Tensor, valid_x: torch.Tensor | None = None, *,
               device=None, backend: str = "auto", max_epochs: int | None = None) -> "Trainer":
        """Continue the run in ``out_dir`` from ``last.safetensors`` (same data required).

        ``max_epochs`` raises (or lowers) the run's epoch limit; every other setting is the run's own.

        Raises:
            FileNotFoundError: no checkpoint in out_dir.
            ValueError: the checkpoint does not fit (architecture mismatch, corrupt file).
        """
        path = os.path.join(os.fspath(out_dir), "last.safetensors")
        tensors, metadata = read_safetensors(path)
        if "trainer" not in metadata:
            raise ValueError(f"{path} is not a trainer checkpoint (no trainer state in its metadata)")
        state = json.loads(metadata["trainer"])
        model = BiHM.from_config(json.loads(metadata["config"]), device=device, backend=backend)
        weights = {k: v for k, v in tensors.items() if not k.startswith("trainer.")}
        model.check_compatible(weights)
        model.load_state_dict(weights)
        settings = dict(state["train"], **({} if max_epochs is None else {"max_epochs": max_epochs}))
        trainer = cls(model, train_x, valid_x, TrainConfig(**settings), out_dir=out_dir)
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
        return trainer
