"""A run folder: its files, claiming it, the config, the log and the checkpoints, and resuming from them."""

from __future__ import annotations

import dataclasses
import json
import os

import torch

from ..checkpoint import read_safetensors, save_safetensors_atomic
from ..files import write_json_atomic, write_text_atomic
from ..model import BiHM
from ..reference._checks import nonfinite_parameters
from ..reference.philox import STREAM_VERSION
from .config import TrainConfig



RUN_FILES = ("config.json", "last.safetensors", "best.safetensors", "log.jsonl")




class _RunFolder:
    """The run folder of a :class:`~.trainer.Trainer` (mixed into it): config.json, log.jsonl, best.safetensors
    and last.safetensors (weights, Adam state, counters), written by rank 0; :meth:`resume` reads them back."""

    def _write_config(self) -> None:
        config = {"model": self.model.config(), "train": dataclasses.asdict(self.config), "data": self.fingerprints}
        if self.data_source is not None:
            config["data_source"] = self.data_source
        self.comm.on_main(write_json_atomic, config, os.path.join(self.out_dir, "config.json"))

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
               cuda_graph: bool | None = None, process_group=None):
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
        trainer.comm.on_main(write_text_atomic, os.path.join(out_dir, "log.jsonl"),
                             "".join(json.dumps(r) + "\n" for r in trainer.history))
        if max_epochs is not None:
            trainer._write_config()
        return trainer


    @classmethod
    def _start_from_config(cls, out_dir: str, config: dict, train_x, valid_x, *, device, backend, max_epochs,
                           cuda_graph, process_group=None):
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
        trainer.comm.on_main(write_text_atomic, os.path.join(out_dir, "log.jsonl"), "")
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


def check_run_dir(out_dir: str, overwrite: bool, *, name: str = "run folder",
                  resume_hint: str = "continue it with --resume (Trainer.resume), ") -> list[str]:
    """Refuse, without touching anything, a folder that cannot become a new run: an existing file, or a folder
    holding a run unless ``overwrite``. Returns the run files present (what ``overwrite`` replaces). The
    trainer's claim and the command line (before it computes anything) check with this.

    Raises:
        FileExistsError: the message names ``name`` (e.g. ``--out``) and the ways on."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{name} {out_dir} is an existing file; give a folder for the run")
    present = [f for f in RUN_FILES if os.path.exists(os.path.join(out_dir, f))]
    if present and not overwrite:
        raise FileExistsError(f"{name} {out_dir} already holds a run ({', '.join(present)}): {resume_hint}replace it "
                              f"with --overwrite (overwrite=True), or choose another --out")
    return present


def _claim_run_dir(out_dir: str, overwrite: bool) -> None:
    """Make ``out_dir`` a fresh run folder: refuse one that holds a run unless ``overwrite`` (then clear it)."""
    present = check_run_dir(out_dir, overwrite)
    os.makedirs(out_dir, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"run folder {out_dir} is not writable")
    for f in present:
        os.remove(os.path.join(out_dir, f))
