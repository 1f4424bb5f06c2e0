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

from .config import MAX_LR, TrainConfig, _step_seed, check_lr, data_fingerprint, option_fields  # noqa: F401
from .rundir import RUN_FILES, check_run_dir, run_config  # noqa: F401
from .trainer import Trainer, TrainingInterrupted  # noqa: F401

__all__ = ["TrainConfig", "Trainer", "TrainingInterrupted", "MAX_LR", "check_lr", "run_config", "data_fingerprint",
           "RUN_FILES"]
