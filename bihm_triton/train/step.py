"""One training step: the loss, its backward and Adam, eagerly or replayed from a CUDA graph."""

from __future__ import annotations


import torch

from .config import _step_seed



class _Steps:
    """The training step of a :class:`~.trainer.Trainer` (mixed into it): loss, backward, the gradient sum over
    the ranks and Adam; on a GPU captured once as a CUDA graph and replayed."""

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
