"""Training settings (SPEC §3: the authors' defaults) and the seeds of a run's steps."""

from __future__ import annotations

import dataclasses

import torch

from ..reference.philox import MAX_SEED, check_seed


_GOLDEN = 0x9E3779B97F4A7C15
#: The largest learning rate: Adam's first step is lr / (1 - β₁) = 10 · lr, which must fit in float32 (3.4e38).
MAX_LR = 3.4e37


def _opt(default, help: str, *, flag: str | None = None, cli: bool = True, choices=None):
    """A :class:`TrainConfig` field with its command-line option in the metadata."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "cli": cli, "choices": choices})


def option_fields() -> list:
    """``[(field, flag)]`` of the :class:`TrainConfig` fields that are command-line options, in order."""
    return [(f, f.metadata.get("flag") or "--" + f.name.replace("_", "-"))
            for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)]


@dataclasses.dataclass
class TrainConfig:
    """Training settings; defaults are the authors' (SPEC §3)."""

    # ``metadata``: the command line's option for the field (``flag``, default ``--<name>``; ``cli=False``: none or
    # its own) and its help; ``bihm-triton train`` builds its options, defaults and checks from these fields
    k: int = _opt(10, "importance samples per data point")
    batch_size: int = _opt(100, "data points per step (the loss is summed over them)")
    lr: float = _opt(1e-3, "Adam learning rate (the authors' is 1e-3); costs are summed over the batch")
    objective: str = _opt("bihm", "bihm: the BiHM bound of the paper; rws: reweighted wake-sleep",
                          choices=("bihm", "rws"))
    max_epochs: int = _opt(1000, "maximum epochs", flag="--epochs")
    patience: int = _opt(10, "early stopping: epochs without a better validation bound")
    valid_k: int = _opt(100, "importance samples per validation point")
    seed: int | None = _opt(0, "of every random choice; None: drawn when a Trainer starts (then recorded)", cli=False)
    l1reg: float = _opt(0.0, "the authors' L1 penalty l1 * sum |W| over every weight matrix, per step")
    l2reg: float = _opt(0.0, "the authors' L2 penalty l2 * sum W^2 over every weight matrix, per step")

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
