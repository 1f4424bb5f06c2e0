"""Reproduce the BiHM paper's experiments on its own data (docs/REPRODUCTION.md).

Experiments (each trains, evaluates on the test split once, and writes ``<out>/<experiment>.json`` and,
where it has one, a figure ``<out>/<experiment>.png``; runs go to ``--runs``):

* ``ess`` — sample efficiency: the same architecture trained with the BiHM objective and with
  reweighted wake-sleep (RWS) on binarized MNIST; on test images, the estimate each model's
  estimator gives (BiHM: log p*(x) = log p̃*(x) − log Ẑ²; RWS: log p(x)) and the effective sample
  size of its weights, for K = 1 … 10⁴ samples; how many samples each needs to come within
  0.1 nats of its K = 10⁴ value.
* ``depth`` — binarized MNIST, BiHMs of 2, 4, 6 and 12 latent layers at about 0.62 M parameters
  each (the authors' ``<f>x-<n>l-<last>`` widths), trained to the same ``--epochs``, test log p*(x)
  side by side.
* ``uci`` — adult, connect4, dna, mushrooms, nips: a grid of BiHMs (``--uci-grid``, architecture and
  l2reg) trained to early stopping, the one with the best validation bound evaluated once on the whole
  test split; beside it two reference rows: the independent-Bernoulli model (add-one smoothed) and a
  one-hidden-layer SBN trained with RWS by the same code. Sets may run in separate processes (one per
  core) writing the same ``uci.json``.
* ``headline`` — the paper's 12-layer net 784-300-200-100-75-50-35-30-25-20-15-10-10 on binarized
  MNIST (the authors report 84.8 nats), with its training curve.
* ``export-pretrained`` — the headline's best model as the package's pretrained ``bmnist-12l``.
* ``report`` — the Markdown tables of every JSON in ``--out``.
* ``pack`` — every run folder in ``--runs`` packed into one file per run in ``--state``
  (``docs/reproduction/state/<run>.safetensors``: weights, Adam moments, counters, curve, best weights,
  config). Committed at the end of a session, so that ``--resume`` on a clean clone unpacks the folder and
  continues the run bit for bit on any machine. Pack once per session, not per epoch: each file is MBs of history.

A model trains until early stopping (``--patience`` epochs without a better validation bound),
``--epochs`` epochs in all, or ``--minutes`` of wall time in all, whichever comes first; ``--resume``
continues the runs already in ``--runs`` (earlier sessions count; with ``--minutes 0`` it only
evaluates them); an existing run is otherwise refused unless ``--overwrite`` is given.
``--test-points N`` evaluates on N test points drawn uniformly at random (seeded), never on the first N:
the binarized MNIST test file is not in random order.

Model selection uses the validation split only; test numbers are computed once per final model.
Everything is seeded (``--seed``); each JSON records its command, commit, date, device, torch version,
thread count, epochs and minutes (UCI: per set). The commands behind docs/REPRODUCTION.md are printed
under its tables (``report``) and listed in its "Rerun" section, e.g.::

    python bench/reproduce.py headline --data-dir ../shared/data --threads 1 --valid-k 10 --epochs 100 --k 1000 \\
        --minutes 100000
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time

import torch

from bihm_triton.evaluate import derived_seed

DEPTH_SPECS = {2: "0.5x-2l-10", 4: "0.45x-4l-10", 6: "0.4x-6l-10", 12: "0.33x-12l-10"}
HEADLINE_SIZES = "300,200,100,75,50,35,30,25,20,15,10,10"
UCI_SETS = ("adult", "connect4", "dna", "mushrooms", "nips")
#: The UCI grid (``--uci-grid``): architecture[@l2reg], chosen on the validation bound only.
UCI_CANDIDATES = ("100,50", "200,100,50", "100,50@0.001", "200,100,50@0.001")
#: Hidden widths of the one-hidden-layer SBN trained with RWS (a reference row), chosen on validation.
UCI_RWS_SBN = (100, 200)
K_GRID = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _data(name: str, args):
    from bihm_triton import data

    train_x, valid_x, test_x = (data.load_dataset(name, s, data_dir=args.data_dir) for s in ("train", "valid", "test"))
    if args.train_points:  # smoke runs only: results with it are not the experiment's
        train_x, valid_x = train_x[: args.train_points], valid_x[: max(1, args.train_points // 5)]
    return train_x, valid_x, test_x


def train(name: str, sizes, train_x, valid_x, args, *, objective: str = "bihm", lr: float | None = None,
          resume: bool = False, l2reg: float | None = None):
    """Train until early stopping (``--patience`` epochs without a better validation bound), ``--epochs`` epochs
    in all, or ``--minutes`` of wall time in all (a resumed run's earlier epochs count; at least one epoch);
    returns (trainer, facts)."""
    from bihm_triton.model import BiHM
    from bihm_triton.train import TrainConfig, Trainer

    out = os.path.join(args.runs, name)
    if resume:
        restore_run(args, name)  # a clean clone: the run's committed state (docs/reproduction/state) becomes its folder
    device = torch.device(args.device)
    train_x, valid_x = train_x.to(device), valid_x.to(device)
    given = {"sizes": list(sizes), "objective": objective, "lr": lr or args.lr, "seed": args.seed,
             "deterministic_layers": getattr(args, "deterministic_layers", 0),
             "valid_k": args.valid_k, "l1reg": getattr(args, "l1reg", 0.0),
             "l2reg": getattr(args, "l2reg", 0.0) if l2reg is None else l2reg, "patience": getattr(args, "patience", 10)}
    # a run stopped before its first checkpoint (config.json alone) is started from its config by Trainer.resume
    if resume and any(os.path.exists(os.path.join(out, f)) for f in ("last.safetensors", "config.json")):
        trainer = Trainer.resume(out, train_x, valid_x, device=device)
        own = {"sizes": list(trainer.model.sizes), "deterministic_layers": trainer.model.deterministic_layers,
               **{k: getattr(trainer.config, k) for k in given if k not in ("sizes", "deterministic_layers")}}
        if trainer.config.patience != given["patience"]:  # a longer patience continues an early-stopped run
            trainer.config.patience = given["patience"]
        differ = [f"{k} {own[k]} (given {given[k]})" for k in given if own[k] != given[k]]
        if differ:
            _log(f"{name}: the resumed run keeps its own settings: {', '.join(differ)}")
    else:
        if resume:
            _log(f"{name}: no run to resume at {out}; starting a new one")
        torch.manual_seed(args.seed)
        model = BiHM(sizes, device=device, deterministic_layers=getattr(args, "deterministic_layers", 0))
        cfg = TrainConfig(objective=objective, lr=given["lr"], max_epochs=100_000, seed=args.seed,
                          valid_k=args.valid_k, l1reg=given["l1reg"], l2reg=given["l2reg"], patience=given["patience"])
        if not args.overwrite and os.path.exists(os.path.join(out, "config.json")):
            raise FileExistsError(f"{out} already holds a run: continue it with --resume, replace it with "
                                  "--overwrite, or choose another --runs")
        trainer = Trainer(model, train_x, valid_x, cfg, out_dir=out, overwrite=args.overwrite)
        if getattr(args, "warm_start", None):
            warm_start(trainer, args)
    t0, e0 = time.perf_counter(), trainer.epoch
    before = sum(r.get("seconds", 0.0) for r in trainer.history)  # a resumed run's earlier sessions count
    max_epochs = getattr(args, "epochs", None) or 10**9
    while trainer.bad_epochs < trainer.config.patience and trainer.epoch < max_epochs and (
            trainer.epoch == 0 or before + time.perf_counter() - t0 < 60 * args.minutes):  # at least one epoch
        trainer.fit(1, progress=False, verbose=False)
        r = trainer.history[-1]
        _log(f"{name}: epoch {r['epoch']} train bound {r['train_bound']:.2f} valid bound {r['valid_bound']:.2f}"
             f"{' *' if r['valid_bound'] >= trainer.best else ''}")
    facts = {"sizes": list(trainer.model.sizes), "parameters": sum(p.numel() for p in trainer.model.parameters()),
             "objective": trainer.config.objective, "lr": trainer.config.lr, "epochs": trainer.epoch,
             "epochs_this_session": trainer.epoch - e0, "train_minutes_this_session":
             round((time.perf_counter() - t0) / 60, 1), "train_minutes_total":
             round(sum(r.get("seconds", 0.0) for r in trainer.history) / 60, 1), "best_valid_bound": trainer.best,
             "valid_k": trainer.config.valid_k, "early_stopped": trainer.bad_epochs >= trainer.config.patience,
             "patience": trainer.config.patience, "l1reg": trainer.config.l1reg, "l2reg": trainer.config.l2reg,
             "deterministic_layers": trainer.model.deterministic_layers,
             "curve": [{"epoch": r["epoch"], "valid_bound": r["valid_bound"], "train_bound": r["train_bound"],
                        "seconds": r.get("seconds")} for r in trainer.history],
             "stopped_by": ("early stopping" if trainer.bad_epochs >= trainer.config.patience else
                            "epoch limit" if trainer.epoch >= max_epochs else "time budget"),
             "run": name, "state": _state_rel(args, name)}
    warm = os.path.join(out, WARM_START_FILE)
    if os.path.exists(warm):
        with open(warm) as f:
            facts["warm_start"] = json.load(f)
    return trainer, facts


# ------------------------------------------------------------------------------ run state across sessions

#: a run folder's note of where its weights came from when it did not start from a fresh initialization
WARM_START_FILE = "warm_start.json"
_RUN_TEXT_FILES = ("config.json", WARM_START_FILE)


def _state_rel(args, name: str) -> str | None:
    """The run's state file as the result JSONs record it: relative to the repository (or as given)."""
    if getattr(args, "state", None) is None:
        return None
    path = os.path.join(args.state, f"{name}.safetensors")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rel = os.path.relpath(os.path.abspath(path), root)
    return path if rel.startswith("..") else rel


def pack_run(run_dir: str, path: str) -> None:
    """Everything ``--resume`` needs of a run folder, in one safetensors file (``path``, written atomically):
    ``last.safetensors``' tensors (weights, Adam moments) and metadata (the trainer's counters, history and
    stream position), ``best.safetensors``' weights under ``best.``, and ``config.json`` (and
    ``warm_start.json``) as metadata. :func:`unpack_run` gives the folder back; resuming it continues the run
    bit for bit."""
    from bihm_triton.checkpoint import read_safetensors, save_safetensors_atomic

    tensors, metadata = read_safetensors(os.path.join(run_dir, "last.safetensors"))
    best, best_meta = read_safetensors(os.path.join(run_dir, "best.safetensors"))
    tensors.update({f"best.{k}": v for k, v in best.items()})
    metadata.pop("sha256", None)
    best_meta.pop("sha256", None)
    packed = dict(metadata, **{"packed.best_metadata": json.dumps(best_meta)})
    for fname in _RUN_TEXT_FILES:
        if os.path.exists(os.path.join(run_dir, fname)):
            with open(os.path.join(run_dir, fname)) as f:
                packed[f"packed.{fname}"] = f.read()
    save_safetensors_atomic(tensors, path, metadata=packed)


def unpack_run(path: str, run_dir: str) -> None:
    """Write the run folder that :func:`pack_run` packed into ``path`` (config.json, last.safetensors,
    best.safetensors, log.jsonl, and warm_start.json where the run has one)."""
    from bihm_triton.checkpoint import read_safetensors, save_safetensors_atomic
    from bihm_triton.files import write_json_atomic

    tensors, metadata = read_safetensors(path)
    metadata.pop("sha256", None)
    best_meta = json.loads(metadata.pop("packed.best_metadata"))
    texts = {fname: metadata.pop(f"packed.{fname}") for fname in _RUN_TEXT_FILES if f"packed.{fname}" in metadata}
    os.makedirs(run_dir, exist_ok=True)
    for fname, text in texts.items():
        write_json_atomic(json.loads(text), os.path.join(run_dir, fname))
    save_safetensors_atomic({k[5:]: v for k, v in tensors.items() if k.startswith("best.")},
                            os.path.join(run_dir, "best.safetensors"), metadata=best_meta)
    save_safetensors_atomic({k: v for k, v in tensors.items() if not k.startswith("best.")},
                            os.path.join(run_dir, "last.safetensors"), metadata=metadata)
    history = json.loads(metadata["trainer"])["history"]
    with open(os.path.join(run_dir, "log.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)


def restore_run(args, name: str) -> bool:
    """``--resume`` on a machine without the run folder: unpack its committed state, if there is one."""
    if getattr(args, "state", None) is None:
        return False
    out, path = os.path.join(args.runs, name), os.path.join(args.state, f"{name}.safetensors")
    if os.path.exists(os.path.join(out, "last.safetensors")) or not os.path.exists(path):
        return False
    unpack_run(path, out)
    _log(f"{name}: restored the run folder {out} from {path}")
    return True


def pack_all(args) -> list[str]:
    """``pack``: every run folder in ``--runs`` with a checkpoint, packed into ``--state`` (one file per run).
    Run it at the end of a session, not every epoch: each packed file is a few MB in the repository's history."""
    packed = []
    for name in sorted(os.listdir(args.runs)) if os.path.isdir(args.runs) else []:
        run_dir = os.path.join(args.runs, name)
        if os.path.exists(os.path.join(run_dir, "last.safetensors")) and (not args.only or name in args.only):
            path = os.path.join(args.state, f"{name}.safetensors")
            pack_run(run_dir, path)
            packed.append(path)
            _log(f"packed {run_dir} -> {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    return packed


def warm_start(trainer, args) -> None:
    """``--warm-start pretrained:NAME``: a new run whose weights, epoch count, step count and training curve are
    those of a shipped model (the model's metadata and the headline JSON in ``--out`` give the epochs and the
    curve). Its Adam moments start from zero: the shipped file holds weights only, so the continuation differs
    from the run that made the model; ``warm_start.json`` in the run folder (and every result) says so."""
    import bihm_triton as bt

    src = args.warm_start
    if not src.startswith("pretrained:"):
        raise SystemExit(f"reproduce.py: error: --warm-start {src!r}: expected pretrained:NAME")
    name = src.split(":", 1)[1]
    model = bt.pretrained(name)
    info = bt.list_pretrained()[name]
    if list(model.sizes) != list(trainer.model.sizes):
        raise SystemExit(f"reproduce.py: error: --warm-start {src}: sizes {model.sizes}, the run's "
                         f"{trainer.model.sizes}")
    with torch.no_grad():
        for dst, p in zip(trainer.model.parameters(), model.parameters()):
            dst.copy_(p)
    trainer.model.refresh_fused_cache()
    head_path = os.path.join(args.out, "headline.json")
    curve = json.load(open(head_path))["curve"] if os.path.exists(head_path) else []
    epochs = int(info.get("epochs") or (curve[-1]["epoch"] if curve else 0))
    curve = [r for r in curve if r["epoch"] <= epochs]
    steps_per_epoch = math.ceil(trainer.train_x.shape[0] / trainer.config.batch_size)
    trainer.epoch, trainer.step = epochs, epochs * steps_per_epoch
    trainer.history = [dict(r, step=r["epoch"] * steps_per_epoch) for r in curve]
    trainer.best = max((r["valid_bound"] for r in curve), default=-math.inf)
    note = {"from": src, "epochs": epochs, "steps": trainer.step, "best_valid_bound": trainer.best,
            "adam_moments": "reset to zero (the shipped file holds weights only)",
            "curve_from": "the headline JSON's curve" if curve else None}
    from bihm_triton.files import write_json_atomic

    write_json_atomic(note, os.path.join(trainer.out_dir, WARM_START_FILE))
    trainer.model.save(os.path.join(trainer.out_dir, "best.safetensors"))
    trainer.save_checkpoint(os.path.join(trainer.out_dir, "last.safetensors"))
    with open(os.path.join(trainer.out_dir, "log.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in trainer.history)
    _log(f"warm start from {src}: epoch {epochs}, step {trainer.step}, best validation bound {trainer.best:.2f}")


def test_subset(test_x: torch.Tensor, n: int | None, seed: int) -> tuple[torch.Tensor, str]:
    """The test points to evaluate on: all of them, or ``n`` drawn uniformly without replacement (seeded).

    Never the first ``n``: Larochelle's binarized MNIST test file is not in random order (blocks of
    500 images range from about -75 to -156 nats under one model), so a prefix is a biased sample.
    Returns the points (in file order) and a description for the JSON.
    """
    if n is None or n >= test_x.shape[0]:
        return test_x, "all"
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(test_x.shape[0], generator=g)[:n].sort().values
    return test_x[idx], (f"{n:,} of the {test_x.shape[0]:,} test points, drawn uniformly without replacement "
                         f"(torch.randperm, seed {seed})")


def best_model(args, run: str, device):
    """The best model of a run, by its name (results of older versions recorded a path: its last part)."""
    from bihm_triton.model import BiHM

    return BiHM.load(os.path.join(args.runs, os.path.basename(run.rstrip("/"))), device=device)


def evaluate(model, test_x, args, *, k: int, seed: int) -> dict:
    """Test log p̃*, log p (IS), log Ẑ² ± se, log p* ± se (nats), once: :func:`bihm_triton.evaluate.evaluate` (the
    command line's recipe and seeds), without the ESS."""
    from bihm_triton.evaluate import evaluate as recipe

    r = recipe(model, test_x.to(model.device), k=k, z_samples=args.z_samples, n_inner=args.n_inner, seed=seed,
               ess=False, verbose=False)
    keys = ("test_points", "k", "z_samples", "n_inner", "log_p_tilde_star", "log_p_tilde_star_se", "log_p", "log_p_se",
            "log_z2", "log_z2_se", "log_p_star", "log_p_star_se")
    return {key: r[key] for key in keys}


@functools.cache
def _commit() -> str | None:
    """The checkout's commit when this process first asked (main() asks at start: the code that ran, whatever
    the tree holds later), with ``+dirty`` when it had uncommitted changes; None outside git."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def _write_json(path: str, obj: dict) -> None:
    """The results' JSON (one-space indent, keys in the order written), atomically."""
    from bihm_triton.files import write_json_atomic

    write_json_atomic(obj, path, indent=1, sort_keys=False)


def _save(args, name: str, result: dict) -> None:
    os.makedirs(args.out, exist_ok=True)
    result = dict(result, date=time.strftime("%Y-%m-%d"), device=str(args.device), torch=torch.__version__,
                  threads=torch.get_num_threads(), command=" ".join(["python bench/reproduce.py", *sys.argv[1:]]),
                  commit=_commit())
    path = os.path.join(args.out, f"{name}.json")
    _write_json(path, result)
    _log(f"wrote {path}")


def merge_sets(path: str, done: dict, top: dict) -> dict:
    """Add the sets this process finished (``done``) to the ones in ``path`` and write it back, under a lock:
    sets of one file may come from several processes (one per core), each set saying how it was made; a set
    this process has not finished yet stays as another process wrote it. Returns what was written."""
    import fcntl

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        on_disk = json.load(open(path)).get("sets", {}) if os.path.exists(path) else {}
        result = dict(top, sets={**on_disk, **done})
        _write_json(path, result)
    return result


# ------------------------------------------------------------------------------ experiments


def run_ess(args) -> dict:
    from bihm_triton.model import parse_sizes

    train_x, valid_x, test_x = _data("binarized_mnist", args)
    sizes = parse_sizes(args.sizes or "200,100,50", 784)
    test_x, subset = test_subset(test_x, args.test_points, args.seed)
    result = {"experiment": "ess", "data": "binarized_mnist", "k_grid": list(args.k_grid), "test_points": len(test_x),
              "test_subset": subset, "models": {}}
    for objective in ("bihm", "rws"):
        _, facts = train(f"ess-{objective}", sizes, train_x, valid_x, args, objective=objective, resume=args.resume)
        model = best_model(args, facts["run"], torch.device(args.device))
        x = test_x.to(model.device)
        z = model.estimate_log_z2(args.z_samples, n_inner=args.n_inner, seed=derived_seed(args.seed, "log_z2")) \
            if objective == "bihm" \
            else None
        rows = []
        for i, k in enumerate(args.k_grid):
            ll = model.log_likelihood(x, k, seed=derived_seed(args.seed, "ess_grid", i))
            ess = model.effective_sample_size(x, k, seed=derived_seed(args.seed, "ess_grid", i))
            est = ll.log_p_tilde_star.double() - z.value if objective == "bihm" else ll.log_p.double()
            w_ess = ess.p_star if objective == "bihm" else ess.p
            rows.append({"k": k, "estimate": float(est.mean()), "se": float(est.std() / math.sqrt(est.numel())),
                         "ess": float(w_ess.double().mean()), "ess_fraction": float(w_ess.double().mean()) / k})
            _log(f"ess-{objective}: K = {k}: {rows[-1]['estimate']:.3f} +- {rows[-1]['se']:.3f} nats, "
                 f"ESS {rows[-1]['ess']:.1f}")
        final = rows[-1]["estimate"]
        within = next((r["k"] for r in rows if abs(r["estimate"] - final) <= 0.1), None)
        result["models"][objective] = dict(facts, rows=rows, log_z2=None if z is None else z.value,
                                           log_z2_se=None if z is None else z.se, k_within_0_1_nats=within,
                                           estimator="log p*(x)" if objective == "bihm" else "log p(x)")
    _save(args, "ess", result)
    figure_ess(result, os.path.join(args.out, "ess.png"))
    return result


def run_depth(args) -> dict:
    from bihm_triton.model import parse_sizes

    train_x, valid_x, test_x = _data("binarized_mnist", args)
    test_x, subset = test_subset(test_x, args.test_points, args.seed)
    result = {"experiment": "depth", "data": "binarized_mnist", "test_subset": subset, "nets": {}}
    for depth in args.depths:
        spec = DEPTH_SPECS[depth]
        _, facts = train(f"depth-{depth}", parse_sizes(spec, 784), train_x, valid_x, args, resume=args.resume)
        model = best_model(args, facts["run"], torch.device(args.device))
        result["nets"][str(depth)] = dict(facts, spec=spec, **evaluate(model, test_x, args, k=args.k, seed=args.seed))
        _log(f"depth {depth}: test log p* {result['nets'][str(depth)]['log_p_star']:.2f}")
        _save(args, "depth", result)
    figure_depth(result, os.path.join(args.out, "depth.png"))
    return result


def parse_candidate(spec: str) -> tuple[str, float]:
    """``"200,100,50@0.001"`` -> (``"200,100,50"``, l2reg 0.001); no ``@``: l2reg 0."""
    arch, _, reg = spec.partition("@")
    return arch, float(reg) if reg else 0.0


def bernoulli_baseline(train_x: torch.Tensor, test_x: torch.Tensor) -> dict:
    """The independent-Bernoulli model fitted on the training split with add-one smoothing,
    ``p_j = (Σ_n x_nj + 1) / (N + 2)``: its exact average test log-likelihood ± standard error (nats)."""
    x = train_x.double()
    p = (x.sum(0) + 1.0) / (x.shape[0] + 2.0)
    t = test_x.double()
    ll = (t * torch.log(p) + (1 - t) * torch.log1p(-p)).sum(1)
    return {"log_p": float(ll.mean()), "log_p_se": float(ll.std() / math.sqrt(ll.numel())), "test_points": len(t)}


def evaluate_rws(model, test_x, args, *, k: int, seed: int) -> dict:
    """Test log p(x) (the IS estimate RWS reports, K samples) ± standard error (nats), once."""
    x = test_x.to(model.device)
    lp = model.log_likelihood(x, k, seed=derived_seed(seed, "log_likelihood")).log_p.double()
    return {"test_points": len(x), "k": k, "log_p": float(lp.mean()), "log_p_se": float(lp.std() / math.sqrt(len(x)))}


def run_uci(args) -> dict:
    """Every set: the grid of BiHMs trained to early stopping, the best on the validation bound evaluated once on
    the whole test split; the reference rows (independent Bernoulli, one-hidden-layer SBN trained with RWS)."""
    from bihm_triton.model import parse_sizes

    path = os.path.join(args.out, "uci.json")
    done = {}  # the sets this process finished; the file keeps every other set (earlier sessions, other processes)
    result = {}
    for name in args.sets:
        train_x, valid_x, test_x = _data(name, args)
        d0 = train_x.shape[1]
        tried = {}
        for spec in args.uci_grid:
            arch, l2 = parse_candidate(spec)
            tag = arch.replace(",", "-") + (f"-l2-{l2:g}" if l2 else "")
            _, facts = train(f"uci-{name}-{tag}", parse_sizes(arch, d0), train_x, valid_x, args, resume=args.resume,
                             l2reg=l2)
            tried[spec] = facts
        chosen = max(tried, key=lambda s: tried[s]["best_valid_bound"])  # the validation split only
        model = best_model(args, tried[chosen]["run"], torch.device(args.device))
        entry = {"chosen": chosen, "candidates": tried, **evaluate(model, test_x, args, k=args.k, seed=args.seed)}
        entry["bernoulli"] = bernoulli_baseline(train_x, test_x)
        sbn = {}
        for width in args.rws_widths:
            _, facts = train(f"uci-{name}-rws-sbn-{width}", [d0, width], train_x, valid_x, args, objective="rws",
                             resume=args.resume, l2reg=0.0)
            sbn[str(width)] = facts
        best_w = max(sbn, key=lambda w: sbn[w]["best_valid_bound"])
        rws_model = best_model(args, sbn[best_w]["run"], torch.device(args.device))
        entry["rws_sbn"] = {"chosen_width": int(best_w), "candidates": sbn,
                            **evaluate_rws(rws_model, test_x, args, k=args.k, seed=args.seed)}
        # each set says how it was made: the sets of one file may come from several processes (one per core)
        entry.update(grid=list(args.uci_grid), rws_widths=list(args.rws_widths), date=time.strftime("%Y-%m-%d"),
                     threads=torch.get_num_threads(), commit=_commit(), command=" ".join(["python bench/reproduce.py", *sys.argv[1:]]))
        done[name] = entry
        result = merge_sets(path, done, {"experiment": "uci", "device": str(args.device), "torch": torch.__version__})
        _log(f"uci {name}: chose {chosen}, test log p* {entry['log_p_star']:.2f}; Bernoulli "
             f"{entry['bernoulli']['log_p']:.2f}; RWS SBN-{best_w} log p {entry['rws_sbn']['log_p']:.2f}")
        _log(f"wrote {path}")
    return result


def run_headline(args) -> dict:
    from bihm_triton.model import parse_sizes

    train_x, valid_x, test_x = _data("binarized_mnist", args)
    _, facts = train("headline", parse_sizes(HEADLINE_SIZES, 784), train_x, valid_x, args, resume=args.resume)
    model = best_model(args, facts["run"], torch.device(args.device))
    test_x, subset = test_subset(test_x, args.test_points, args.seed)
    result = {"experiment": "headline", "data": "binarized_mnist", "published_log_p_star": -84.8, "test_subset": subset,
              **facts, **evaluate(model, test_x, args, k=args.k, seed=args.seed)}
    curve = facts["curve"]
    if len(curve) >= 2:  # the bound's slope over the last epochs (nats per epoch): is it still improving?
        tail = curve[-min(5, len(curve)):]
        result["valid_bound_slope_last_epochs"] = (tail[-1]["valid_bound"] - tail[0]["valid_bound"]) / max(
            1, tail[-1]["epoch"] - tail[0]["epoch"])
    _save(args, "headline", result)
    figure_curve(result, os.path.join(args.out, "headline.png"))
    return result


def export_pretrained(args) -> str:
    """Write the headline run's best model as the package's pretrained model (``bihm_triton/pretrained/``), its
    measured numbers (from ``<out>/headline.json``), the stream version, the command and commit in its
    metadata, and a check a test recomputes: 16 test points' log p̃*(x) at K = 100, seed 7."""
    from bihm_triton.checkpoint import save_safetensors_atomic
    from bihm_triton.reference.philox import STREAM_VERSION

    head = json.load(open(os.path.join(args.out, "headline.json")))
    model = best_model(args, head["run"], torch.device("cpu"))
    _, _, test_x = _data("binarized_mnist", args)
    idx = torch.randperm(test_x.shape[0], generator=torch.Generator().manual_seed(7))[:16].sort().values
    ll = model.log_likelihood(test_x[idx], 100, seed=7).log_p_tilde_star.double()
    keys = ("log_p_star", "log_p_star_se", "log_p_tilde_star", "log_p_tilde_star_se", "log_p", "log_p_se",
            "log_z2", "log_z2_se", "k", "z_samples", "n_inner", "test_points")
    info = {"name": args.pretrained_name, "data": "binarized_mnist", "sizes": model.sizes,
            "description": "the paper's 12-layer BiHM (784-300-200-100-75-50-35-30-25-20-15-10-10) trained on "
                           "Larochelle's binarized MNIST by bench/reproduce.py headline",
            "test": {k: head[k] for k in keys if k in head}, "epochs": head["epochs"],
            "best_valid_bound": head["best_valid_bound"], "valid_k": head.get("valid_k"),
            "train_minutes": head.get("train_minutes_total"), "stream_version": STREAM_VERSION,
            "command": head["command"], "commit": head.get("commit"), "date": head["date"],
            "check": {"test_indices": idx.tolist(), "k": 100, "seed": 7,
                      "log_p_tilde_star": [round(float(v), 6) for v in ll]}}
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bihm_triton", "pretrained",
                        f"{args.pretrained_name}.safetensors")
    save_safetensors_atomic({k: v.detach().float() for k, v in model.state_dict().items()}, path,
                            metadata={"config": json.dumps(model.config()), "pretrained": json.dumps(info),
                                      "stream_version": str(STREAM_VERSION)})
    _log(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    return path


# ------------------------------------------------------------------------------ figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_ess(result: dict, path: str) -> None:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for objective, color in (("bihm", "C0"), ("rws", "C3")):
        m = result["models"].get(objective)
        if not m:
            continue
        ks = [r["k"] for r in m["rows"]]
        final = m["rows"][-1]["estimate"]
        label = f"{objective.upper()}: {m['estimator']}"
        a.errorbar(ks, [r["estimate"] - final for r in m["rows"]], yerr=[r["se"] for r in m["rows"]], color=color,
                   marker="o", capsize=3, label=label)
        b.plot(ks, [r["ess"] for r in m["rows"]], color=color, marker="o", label=f"{objective.upper()} weights")
    a.axhline(-0.1, color="gray", ls=":", lw=1)
    a.set(xscale="log", xlabel="samples per test point K",
          ylabel=f"estimate − its K = {result['k_grid'][-1]:,} value (nats)", title="convergence of the likelihood estimate")
    b.set(xscale="log", yscale="log", xlabel="samples per test point K", ylabel="effective sample size",
          title="ESS of the importance weights")
    b.plot(result["k_grid"], result["k_grid"], color="gray", ls=":", lw=1, label="ESS = K")
    for ax in (a, b):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_curve(result: dict, path: str) -> None:
    """The headline's training curve: validation (and training) bound per epoch, every session's epochs."""
    plt = _plt()
    c = result["curve"]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot([r["epoch"] for r in c], [r["valid_bound"] for r in c], label=f"validation bound (K = {result['valid_k']})")
    ax.plot([r["epoch"] for r in c], [r["train_bound"] for r in c], alpha=0.6, label="training bound (K = 10)")
    ax.axhline(result["published_log_p_star"], color="gray", ls=":", lw=1, label="published test log p* (84.8)")
    ax.set(xlabel="epoch", ylabel="nats", title="the 12-layer BiHM on binarized MNIST")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_depth(result: dict, path: str) -> None:
    plt = _plt()
    nets = sorted(result["nets"].items(), key=lambda kv: int(kv[0]))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.errorbar([int(d) for d, _ in nets], [r["log_p_star"] for _, r in nets],
                yerr=[r["log_p_star_se"] for _, r in nets], marker="o", capsize=3)
    ax.set(xlabel="latent layers", ylabel="test log p*(x) (nats)", xticks=[int(d) for d, _ in nets],
           title="binarized MNIST, ~0.62 M parameters each")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ report

#: Published numbers (average test log-likelihood, nats), each with where it was read. Only numbers
#: this project could read in a source are listed. The UCI ones come from a secondary aggregator
#: (wizwand.com/paper/68fa61301e209131ce9f31ec) that lists one number per set under the EoNADE paper
#: (Uria, Murray & Larochelle 2014, "A Deep and Tractable Density Estimator") without naming the model
#: row; that paper's table has both NADE and EoNADE rows, so which model each number belongs to is
#: unverified (connect4's −11.99 may be NADE's: the aggregator may list each set's best row). The primary
#: tables (the RWS paper, Bornschein & Bengio 2015; MADE, Germain et al. 2015) could not be read from this
#: machine (the stored copies hold only their first pages), so no published SBN (RWS) number is quoted.
PUBLISHED = {
    "binarized_mnist": {"BiHM, 12 layers (Bornschein et al. 2016)": (-84.8, "the authors' repository README "
                        "(github.com/jbornschein/bihm) and the paper's abstract-level claim")},
    "connect4": {"NADE or EoNADE (attribution unverified)": (-11.99, "wizwand.com listing, filed under EoNADE")},
    "dna": {"NADE or EoNADE (attribution unverified)": (-82.31, "wizwand.com listing, filed under EoNADE")},
    "mushrooms": {"NADE or EoNADE (attribution unverified)": (-9.68, "wizwand.com listing, filed under EoNADE")},
}


def _fmt(v, se=None, digits=2):
    if v is None:
        return "—"
    return f"{v:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def report(args) -> str:
    """Markdown tables of every result JSON in ``args.out`` (the body of docs/REPRODUCTION.md's results)."""
    def load(name):
        path = os.path.join(args.out, f"{name}.json")
        return json.load(open(path)) if os.path.exists(path) else None

    out = []

    def minutes(facts):
        return facts.get("train_minutes_total", facts["train_minutes_this_session"])

    def points(result):
        n, how = result["test_points"], result.get("test_subset")
        if how is None:  # results written before subsets were drawn at random
            return f"the first {n:,} test points"
        return f"all {n:,} test points" if how == "all" else how

    def runnable(cmd):  # where this machine kept its runs and results is no part of the command to rerun
        words, kept = cmd.split(), []
        for i, w in enumerate(words):
            if w in ("--out", "--runs") or w.startswith(("--out=", "--runs=")) or (
                    i and words[i - 1] in ("--out", "--runs")):
                continue
            kept.append(w)
        return " ".join(kept)

    def facts(result, threads):
        commit = f", commit {result['commit'][:7]}{'+dirty' if result['commit'].endswith('+dirty') else ''}" if (
            result.get("commit")) else ""
        return (f"{result['date']}, {result['device']}, torch {result['torch']}, "
                f"{threads} thread{'s' if threads != 1 else ''}{commit}")

    def command(result):
        return [f"Command: `{runnable(result['command'])}` ({facts(result, result['threads'])}).", ""]

    ess = load("ess")
    if ess:
        out += ["### Sample efficiency (ESS) — binarized MNIST", "",
                f"Architecture {ess['models']['bihm']['sizes']}, both objectives trained with the same recipe: "
                + ", ".join(f"{o.upper()} {m['epochs']} epochs ({m.get('stopped_by', '')}, {minutes(m):.0f} min)"
                            for o, m in ess["models"].items())
                + f"; {points(ess)}; estimate ± standard error over the images (nats).", "",
                "| K | BiHM log p*(x) | ESS (p*-weights) | RWS log p(x) | ESS (p-weights) |", "|---|---|---|---|---|"]
        for rb, rr in zip(ess["models"]["bihm"]["rows"], ess["models"]["rws"]["rows"]):
            out.append(f"| {rb['k']} | {_fmt(rb['estimate'], rb['se'])} | {rb['ess']:.1f} | "
                       f"{_fmt(rr['estimate'], rr['se'])} | {rr['ess']:.1f} |")
        out += ["", f"Samples needed to come within 0.1 nats of the K = {ess['k_grid'][-1]:,} value: BiHM "
                f"{ess['models']['bihm']['k_within_0_1_nats']}, RWS {ess['models']['rws']['k_within_0_1_nats']}."
                f" log Ẑ² of the BiHM: {_fmt(ess['models']['bihm']['log_z2'], ess['models']['bihm']['log_z2_se'], 3)}.",
                "", *command(ess), "![ESS](reproduction/ess.png)", ""]
    depth = load("depth")
    if depth:
        out += ["### Depth — binarized MNIST", "", "| latent layers | spec | widths | parameters | epochs (min) | "
                "best validation bound | test log p̃*(x) | log Ẑ² | test log p*(x) |",
                "|---|---|---|---|---|---|---|---|---|"]
        for d, r in sorted(depth["nets"].items(), key=lambda kv: int(kv[0])):
            out.append(f"| {d} | `{r['spec']}` | {'-'.join(map(str, r['sizes']))} | {r['parameters']:,} | "
                       f"{r['epochs']} ({minutes(r):.0f}) | {r['best_valid_bound']:.2f} | "
                       f"{_fmt(r['log_p_tilde_star'], r['log_p_tilde_star_se'])} | "
                       f"{_fmt(r['log_z2'], r['log_z2_se'], 3)} | {_fmt(r['log_p_star'], r['log_p_star_se'])} |")
        any_r = next(iter(depth["nets"].values()))
        out += ["", f"K = {any_r['k']} samples per test image on {points(dict(any_r, **depth))}; "
                f"log Ẑ² from {any_r['z_samples']:,} samples ({any_r['n_inner']} inner).", "", *command(depth),
                "![depth](reproduction/depth.png)", ""]
    uci = load("uci")
    if uci:
        out += ["### UCI binary sets", "",
                "| set | chosen BiHM (epochs, stopped by) | test log p*(x), ours | log Ẑ² | independent Bernoulli | "
                "one-hidden-layer SBN, RWS (ours) | published (see the note) |", "|---|---|---|---|---|---|---|"]
        for name, r in uci["sets"].items():
            pub = "; ".join(f"{m}: {v}" for m, (v, src) in PUBLISHED.get(name, {}).items()) or "—"
            c = r["candidates"][r["chosen"]]
            stop = c.get("stopped_by", "early stopping" if c["early_stopped"] else "time budget")
            bern = r.get("bernoulli")
            sbn = r.get("rws_sbn")
            out.append(f"| {name} | `{r['chosen']}` ({c['epochs']}, {stop}) | "
                       f"{_fmt(r['log_p_star'], r['log_p_star_se'])} | {_fmt(r['log_z2'], r['log_z2_se'], 3)} | "
                       f"{_fmt(bern['log_p'], bern['log_p_se']) if bern else '—'} | "
                       f"{(_fmt(sbn['log_p'], sbn['log_p_se']) + ' (' + str(sbn['chosen_width']) + ' units)') if sbn else '—'}"
                       f" | {pub} |")
        out += ["", "Every candidate (architecture `widths[@l2reg]`, chosen on the validation bound only):", "",
                "| set | candidate | best validation bound | epochs | stopped by |", "|---|---|---|---|---|"]
        for name, r in uci["sets"].items():
            for spec, c in r["candidates"].items():
                out.append(f"| {name} | `{spec}` | {c['best_valid_bound']:.2f} | {c['epochs']} | "
                           f"{c.get('stopped_by', 'early stopping' if c['early_stopped'] else 'time budget')} |")
            for w, c in (r.get("rws_sbn") or {}).get("candidates", {}).items():
                out.append(f"| {name} | SBN {w} (RWS) | {c['best_valid_bound']:.2f} | {c['epochs']} | "
                           f"{c.get('stopped_by', '')} |")
        any_r = next(iter(uci["sets"].values()))
        ks = {}
        for name, r in uci["sets"].items():
            ks.setdefault(r["k"], []).append(name)
        k_text = (", ".join(f"{k:,} ({', '.join(names)})" for k, names in ks.items()) if len(ks) > 1
                  else f"{any_r['k']:,}")
        out += ["", f"K = {k_text} samples per test point, every test point; log Ẑ² from "
                f"{any_r['z_samples']:,} samples ({any_r['n_inner']} inner). The RWS SBN row is its log p(x) "
                "estimate (what RWS reports); the Bernoulli row is exact.", ""]
        made = {}  # sets trained by separate processes (e.g. one per core) carry their own commands and commits
        for name, r in uci["sets"].items():
            made.setdefault((r.get("command", uci.get("command")), r.get("commit", uci.get("commit"))), []).append(name)
        for (cmd, _), names in made.items():
            r = dict(uci, **uci["sets"][names[0]])
            out += [f"{', '.join(names)}: `{runnable(cmd)}` ({facts(r, r['threads'])}).", ""]
    head = load("headline")
    if head:
        slope = head.get("valid_bound_slope_last_epochs")
        out += ["### The headline — the paper's 12-layer net on binarized MNIST", "",
                "| | ours | published |", "|---|---|---|",
                f"| test log p*(x) (nats) | {_fmt(head['log_p_star'], head['log_p_star_se'])} | −84.8 |",
                f"| test log p̃*(x) | {_fmt(head['log_p_tilde_star'], head['log_p_tilde_star_se'])} | — |",
                f"| log Ẑ² | {_fmt(head['log_z2'], head['log_z2_se'], 3)} | — |",
                f"| best validation bound (K = {head.get('valid_k', 100)}) | {head['best_valid_bound']:.2f} | — |",
                f"| validation bound's slope over the last epochs | "
                f"{'—' if slope is None else f'{slope:+.3f} nats/epoch'} | — |",
                f"| epochs / training wall time | {head['epochs']} ({head.get('stopped_by', '')}) / "
                f"{minutes(head):.0f} min on {head['device']} | hundreds of epochs on a GPU |", "",
                f"K = {head['k']} samples per test image on {points(head)}.", "", *command(head),
                "![training curve](reproduction/headline.png)", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("experiment", choices=("ess", "depth", "uci", "headline", "report", "export-pretrained", "pack"))
    ap.add_argument("--data-dir", default=os.environ.get("BIHM_DATA_DIR"), help="local copies of the data sets (default: $BIHM_DATA_DIR)")
    ap.add_argument("--out", default="docs/reproduction", help="where the JSON and figures go")
    ap.add_argument("--runs", default="runs/reproduce", help="run folders (checkpoints)")
    ap.add_argument("--state", default="docs/reproduction/state", help="the runs' packed states, one file per "
                    "run (written by 'pack' at the end of a session; --resume unpacks a run missing from --runs)")
    ap.add_argument("--only", nargs="*", default=None, help="pack: only these runs (names in --runs)")
    ap.add_argument("--warm-start", default=None, metavar="pretrained:NAME", help="a new run starts from a shipped "
                    "model's weights, epochs and curve (Adam moments from zero; recorded in the results)")
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall time per model, in all (with "
                    "--resume the earlier sessions count)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's own count)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (the authors': 1e-3)")
    ap.add_argument("--valid-k", type=int, default=100, help="samples per validation point")
    ap.add_argument("--k", type=int, default=1000, help="samples per test point (depth, uci, headline)")
    ap.add_argument("--z-samples", type=int, default=100_000, help="samples of p for log Z^2")
    ap.add_argument("--n-inner", type=int, default=10, help="q-samples per log Z^2 term")
    ap.add_argument("--test-points", type=int, default=None, help="ess, depth, headline: evaluate on N test "
                    "points drawn uniformly at random (seeded by --seed) instead of all (ess: 200 unless given)")
    ap.add_argument("--train-points", type=int, default=None, help="smoke runs: train on the first N points only")
    ap.add_argument("--k-grid", type=int, nargs="*", default=list(K_GRID), help="ess: the K values (the last is "
                    "the reference value for 'within 0.1 nats')")
    ap.add_argument("--sizes", default=None, help="ess: the architecture (default 200,100,50)")
    ap.add_argument("--depths", type=int, nargs="*", default=sorted(DEPTH_SPECS), help="depth: which nets")
    ap.add_argument("--sets", nargs="*", default=list(UCI_SETS), help="uci: which sets")
    ap.add_argument("--uci-grid", nargs="*", default=list(UCI_CANDIDATES), help="uci: candidate architectures, "
                    "each 'widths[@l2reg]' (chosen on the validation bound)")
    ap.add_argument("--rws-widths", type=int, nargs="*", default=list(UCI_RWS_SBN), help="uci: hidden widths of "
                    "the one-hidden-layer SBN reference row (RWS), chosen on validation")
    ap.add_argument("--pretrained-name", default="bmnist-12l", help="export-pretrained: the model's name")
    ap.add_argument("--epochs", type=int, default=None, help="stop every model at this many epochs in all (depth: "
                    "equal training)")
    ap.add_argument("--patience", type=int, default=10, help="early stopping: epochs without a better validation "
                    "bound (the authors': 10)")
    ap.add_argument("--l1reg", type=float, default=0.0, help="the authors' --l1reg (l1 · Σ|W| per step)")
    ap.add_argument("--l2reg", type=float, default=0.0, help="the authors' --l2reg (l2 · Σ W² per step; uci: "
                    "the grid's @l2reg overrides it)")
    ap.add_argument("--deterministic-layers", type=int, default=0, help="the authors' --deterministic-layers: tanh "
                    "hidden layers inside every conditional")
    once = ap.add_mutually_exclusive_group()
    once.add_argument("--overwrite", action="store_true", help="replace runs already in --runs (without it, and "
                    "without --resume, an existing run is an error)")
    once.add_argument("--resume", action="store_true", help="continue the runs found in --runs instead of starting "
                    "over (with --minutes 0: evaluate them as they are)")
    args = ap.parse_args(argv)
    if args.data_dir is not None and not os.path.isdir(os.path.expanduser(args.data_dir)):
        ap.error(f"--data-dir {args.data_dir}: no such folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    _commit()  # recorded now: the tree may change while a long run trains
    if args.experiment == "ess" and args.test_points is None:
        args.test_points = 200
    if args.experiment == "report":
        print(report(args))
        return 0
    if args.experiment == "pack":
        pack_all(args)
        return 0
    if args.experiment == "export-pretrained":
        export_pretrained(args)
        return 0
    try:
        {"ess": run_ess, "depth": run_depth, "uci": run_uci, "headline": run_headline}[args.experiment](args)
    except FileExistsError as e:
        print(f"reproduce.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
