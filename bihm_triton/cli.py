"""Command-line interface ``bihm-triton`` (also ``python -m bihm_triton``).

Commands: ``demo`` (train on the bundled 8×8 digits, evaluate, draw a figure), ``train``, ``eval``,
``sample`` and ``inpaint``. Data sources (``--data``): ``digits`` (scikit-learn's bundled digits,
no network), ``idx:<path>`` (MNIST IDX images), or a name from
:func:`bihm_triton.data.list_datasets`. Layer sizes (``--sizes``): ``200,100,50`` or the authors'
``<f>x-<n>l-<last>``.

Errors are one line on stderr: ``bihm-triton <command>: error: …``; exit status 2 for bad
arguments, data or files (argparse's convention), 1 when training diverges, 130 on Ctrl-C (training
first finishes its step and saves it: ``train --resume`` continues exactly). Destinations (run folders, ``--json``,
``--figure``, ``--out``) are checked before any work.

Under ``torchrun`` (``WORLD_SIZE`` > 1), ``train`` and ``eval`` run on every process
(:mod:`bihm_triton.distributed`: NCCL with one GPU per process, gloo on CPUs): rank 0 prints and
writes files, the other ranks print only their own errors (tagged with their rank); ``demo``,
``sample`` and ``inpaint`` are single-process commands and are refused there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time

import torch

from .data.sources import SPLITS, load_split, open_data  # noqa: F401  (also what tests import from here)
from .evaluate import _masked, evaluate, make_mask, overview_figure, print_evaluation, random_rows  # noqa: F401
from .train.config import TrainConfig, option_fields

DATA_HELP = ("digits (bundled 8x8 digits, default) | idx:<folder or file of MNIST IDX images> | "
             "a registered set: binarized_mnist, mnist, adult, connect4, dna, mushrooms, nips, ...")
DESCRIPTION = """\
Bidirectional Helmholtz Machines on Triton GPU kernels: train, evaluate, sample, inpaint.

Data (--data): digits (scikit-learn's bundled 8x8 digits, no network), idx:<path> (MNIST IDX
images; a folder with both train and t10k files gives the standard 50000/10000/10000 split,
otherwise the last 20 % are test and the 10 % before validation), or a registered set
(bihm_triton.data.list_datasets(); read from --data-dir / $BIHM_DATA_DIR when there, else
downloaded and checksum-verified). Layer sizes (--sizes): latent widths '200,100,50' or the
authors' '<f>x-<n>l-<last>'.

Errors are one line (argument errors after the usage line); exit status 2 for bad arguments,
data or files, 1 when training diverges, 130 on Ctrl-C (training saves the step it reached:
--resume continues exactly). --threads N sets torch's CPU threads
(default 1: these networks are small and more threads fight over a busy machine).
A run remembers its --data/--data-dir: --resume, eval and inpaint use them unless given.
"""

# Training settings: None on the command line means "not given" (the defaults below apply to a new
# run; a resumed run keeps its own and refuses conflicting ones).
#: The training options that are fields of TrainConfig: (field name, option dest, flag, field); their defaults,
#: help and checks come from the field (bihm_triton.train.config), so the command line and the library agree.
TRAIN_FIELDS = [(f.name, flag[2:].replace("-", "_"), flag, f) for f, flag in option_fields()]
TRAIN_KEYS = ("sizes", "weight_norm", "deterministic_layers", "seed", *(dest for _, dest, _, _ in TRAIN_FIELDS))
TRAIN_DEFAULTS = dict(sizes="200,100,50", weight_norm=False, deterministic_layers=0, seed=TrainConfig().seed,
                      **{dest: f.default for _, dest, _, f in TRAIN_FIELDS})
DEMO_DEFAULTS = dict(TRAIN_DEFAULTS, sizes="48,32,24,16", epochs=150, lr=3e-3)
#: Seconds between the progress lines of a long epoch where no progress bar is shown (log files, --no-progress).
HEARTBEAT_S = 30.0


# ------------------------------------------------------------------------------ destinations


def _check_writable_parent(path: str, what: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise PermissionError(f"{what} {path}: cannot write there ({parent} is not a writable folder)")


def output_file(path: str | None, what: str, suffix: str | None = None) -> str | None:
    """Check an output file before any work: not a folder, in a writable place. With ``suffix``, a path
    without it gets it (what is printed is what is written)."""
    if path is None:
        return None
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a folder; give a file name")
    if suffix and not path.lower().endswith(suffix):
        path += suffix
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a folder; give a file name")
    _check_writable_parent(path, what)
    return path


# ----------------------------------------------------------------------------------- helpers


def _device(name: str | None) -> torch.device:
    """The ``--device`` (default CUDA when available); under torchrun a bare ``cuda`` is the process's
    own GPU, ``cuda:$LOCAL_RANK``."""
    from .distributed import local_device

    if name is None:
        return local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available (use --device cpu)")
    return local_device(dev)


def _processes_note() -> str:
    """``", 2 processes (torchrun, data-parallel)"`` under torchrun with 2 processes, else ``""``."""
    from .distributed import torchrun_world_size

    n = torchrun_world_size()
    return f", {n} processes (torchrun, data-parallel)" if n > 1 else ""


def _load_model(checkpoint: str, device, backend: str):
    from .model import BiHM
    from .pretrained import PRETRAINED_PREFIX, pretrained_path

    if checkpoint.startswith(PRETRAINED_PREFIX):  # a model shipped with the package
        try:
            checkpoint = pretrained_path(checkpoint)
        except KeyError as e:
            raise ValueError(f"--checkpoint {checkpoint}: {e.args[0]}") from None
    return BiHM.load(os.path.expanduser(checkpoint), device=device, backend=backend)


# ---------------------------------------------------------------------------------- commands


def _settings(args, defaults: dict) -> tuple[dict, dict]:
    """(settings with defaults filled in, the ones given on the command line)."""
    given = {k: getattr(args, k) for k in TRAIN_KEYS if getattr(args, k, None) is not None}
    return {**defaults, **given}, given


def _run_config(run_path: str) -> dict:
    from .train import run_config

    return run_config(run_path)


def _recorded_data(run_path: str) -> dict:
    """The ``--data`` / ``--data-dir`` a run was trained with (``{}`` for runs that did not record them); for a
    shipped model (``pretrained:<name>``) the data set it was trained on."""
    from .pretrained import PRETRAINED_PREFIX, list_pretrained

    if run_path.startswith(PRETRAINED_PREFIX):
        info = list_pretrained().get(run_path[len(PRETRAINED_PREFIX):], {})
        return {"data": info["data"]} if info.get("data") else {}
    return _run_config(os.path.expanduser(run_path)).get("data_source") or {}


def _data_of(args, recorded: dict) -> tuple[str, str | None]:
    """``(--data, --data-dir)``: as given, else the run's own (``recorded``, see :func:`_recorded_data`),
    else digits."""
    data = args.data or recorded.get("data") or "digits"
    data_dir = args.data_dir or (recorded.get("data_dir") if data == recorded.get("data") else None)
    return data, data_dir


def _check_resume_conflicts(out_dir: str, given: dict, d0: int) -> None:
    """Refuse settings given with --resume that differ from the run's (by name)."""
    from .model import parse_sizes

    path = os.path.join(out_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: no run in {out_dir} (no config.json)")
    with open(path) as f:
        run = json.load(f)
    own = dict(run.get("train", {}), sizes=run.get("model", {}).get("sizes"),
               weight_norm=run.get("model", {}).get("weight_norm"),
               deterministic_layers=run.get("model", {}).get("deterministic_layers", 0))
    names = {"batch_size": "--batch-size", "valid_k": "--valid-k", "weight_norm": "--weight-norm",
             "deterministic_layers": "--deterministic-layers"}
    conflicts = []
    for key, value in given.items():
        if key == "epochs":
            continue
        mine = own.get(key)
        theirs = parse_sizes(value, d0) if key == "sizes" else value
        if mine is not None and theirs != mine:
            conflicts.append(f"{names.get(key, '--' + key)} {value} (the run has {mine})")
    if conflicts:
        raise ValueError(f"--resume continues the run in {out_dir} with its own settings; these differ: "
                         f"{'; '.join(conflicts)}. Leave them out, or start a new run with another --out")


def _note_full_size_list(spec: str, sizes: list, command: str) -> None:
    """One line when an explicit ``--sizes`` list starts with the data width: the user may have given the
    full ``[d_0, d_1, ...]`` list (as ``BiHM`` takes it) where the command takes latent widths only."""
    from .model import _GEOMETRIC

    if _GEOMETRIC.match(spec) or sizes[1] != sizes[0]:
        return
    hint = f"; for {[sizes[0], *sizes[2:]]} give --sizes {','.join(map(str, sizes[2:]))}" if len(sizes) > 2 else ""
    print(f"bihm-triton {command}: note: --sizes lists the latent widths only (d_0 = {sizes[0]} comes from the "
          f"data), so this trains {sizes}, whose first latent layer is as wide as the data{hint}", flush=True)


def _train(args, defaults: dict = TRAIN_DEFAULTS) -> int:
    from .model import BiHM, parse_sizes
    from .train import Trainer, check_run_dir

    settings, given = _settings(args, defaults)
    out = os.path.expanduser(args.out)
    resume = getattr(args, "resume", False)
    if resume and getattr(args, "overwrite", False):
        raise ValueError("--resume and --overwrite contradict each other")
    if not resume:  # the run folder first: nothing is computed for a destination that cannot be used
        check_run_dir(out, getattr(args, "overwrite", False), name="--out",
                      resume_hint="continue it with --resume, " if args.command == "train" else "")
        _check_writable_parent(os.path.join(out, "config.json"), "--out")
    elif not os.path.isfile(os.path.join(out, "last.safetensors")) and "model" not in _run_config(out):
        raise FileNotFoundError(f"--resume: no run to continue in {out} (no last.safetensors, no config.json)")
    torch.manual_seed(settings["seed"])
    device = _device(args.device)
    recorded = _recorded_data(out) if resume else {}
    if args.data and recorded.get("data") not in (None, args.data):
        raise ValueError(f"--resume: the run in {out} was trained on --data {recorded['data']}, not {args.data}")
    source, data_dir = _data_of(args, recorded)
    data = open_data(source, data_dir)
    train_x, valid_x = data.split("train").to(device), data.split("valid").to(device)
    if resume:
        _check_resume_conflicts(out, given, train_x.shape[1])
        fresh = not os.path.isfile(os.path.join(out, "last.safetensors"))
        trainer = Trainer.resume(out, train_x, valid_x, device=device, backend=args.backend,
                                 max_epochs=given.get("epochs"))
        if trainer.epoch >= trainer.config.max_epochs or trainer.bad_epochs >= trainer.config.patience:
            why = "its epoch limit" if trainer.epoch >= trainer.config.max_epochs else "early stopping"
            print(f"the run in {out} already ended at epoch {trainer.epoch} ({why}); give --epochs to go further")
            return 0
        if fresh:
            print(f"starting the run in {out} (--data {source}) from its config.json: it stopped before its first "
                  f"checkpoint (up to epoch {trainer.config.max_epochs})")
        else:
            batch = trainer.position["batches"]
            at = f"epoch {trainer.epoch + 1}, batch {batch + 1}" if batch else f"epoch {trainer.epoch}"
            print(f"resuming {out} (--data {source}) at {at} (up to epoch {trainer.config.max_epochs})")
    else:
        sizes = parse_sizes(settings["sizes"], train_x.shape[1])
        if "sizes" in given:
            _note_full_size_list(given["sizes"], sizes, args.command)
        model = BiHM(sizes, weight_norm=settings["weight_norm"], deterministic_layers=settings["deterministic_layers"],
                     backend=args.backend, device=device)
        cfg = TrainConfig(seed=settings["seed"], **{name: settings[dest] for name, dest, _, _ in TRAIN_FIELDS})
        trainer = Trainer(model, train_x, valid_x, cfg, out_dir=out, overwrite=getattr(args, "overwrite", False),
                          data_source={"data": source,
                                       "data_dir": os.path.abspath(data_dir) if data_dir else None})
        print(f"training BiHM {sizes} ({cfg.objective}) on {source}: {train_x.shape[0]} train / "
              f"{valid_x.shape[0]} valid points, K = {cfg.k}, batch {cfg.batch_size}, Adam lr {cfg.lr}, "
              f"device {device}{_processes_note()}")
    t0, e0 = time.perf_counter(), trainer.epoch
    # a bar on a terminal; in a log file (or with --no-progress) a line per epoch and a heartbeat line
    trainer.fit(progress=_progress(args), heartbeat_s=HEARTBEAT_S)
    print(f"trained {trainer.epoch - e0} epochs in {time.perf_counter() - t0:.0f}s"
          f"{f' (now at epoch {trainer.epoch})' if e0 else ''}; best valid bound {trainer.best:.3f}; "
          f"checkpoints in {out}")
    return 0


def _progress(args):
    return False if args.no_progress else None


def _is_main() -> bool:
    """Rank 0 of an initialized torch.distributed group, or a single process."""
    from .distributed import Comm

    return Comm().is_main


def _eval(args) -> int:
    json_out = output_file(args.json, "--json")
    figure = output_file(args.figure, "--figure", ".png")
    device = _device(args.device)
    data = open_data(*_data_of(args, _recorded_data(args.checkpoint)))
    model = _load_model(args.checkpoint, device, args.backend)
    x = model._check_x(data.split(args.split).to(device))  # fail on the wrong data before any work
    if x.shape[0] < 1:
        raise ValueError(f"the {args.split} split of --data {data.source} has no data points")
    r = evaluate(model, x, k=args.k, z_samples=args.z_samples, n_inner=args.n_inner, seed=args.seed,
                 progress=_progress(args))
    print_evaluation(r)
    if not _is_main():
        return 0  # rank 0 writes the files (and draws the figure)
    if json_out:
        with open(json_out, "w") as f:
            json.dump(r, f, indent=2)
        print(f"wrote {json_out}")
    if figure:
        name = f"idx:{os.path.basename(os.path.normpath(data.source[4:]))}" if data.source.startswith("idx:") \
            else data.source
        overview_figure(model, x, figure, steps=args.gibbs_steps, seed=args.seed, progress=_progress(args),
                        title=f"BiHM {model.sizes} on {name} ({args.split}): log p*(x) = {r['log_p_star']:.2f} nats",
                        shape=data.shape, order=data.order, what=f"{args.split} data")
        print(f"wrote {figure}")
    return 0


def _sample(args) -> int:
    from .plotting import figure_panels

    out = output_file(args.out, "--out", ".png")
    device = _device(args.device)
    model = _load_model(args.checkpoint, device, args.backend)
    if args.method == "p":
        x = model.sample_p(args.n, seed=args.seed)
    elif args.method == "gibbs":
        x = model.gibbs_sample(args.n, args.steps, args.k, seed=args.seed, progress=_progress(args),
                               paper_compatible=args.paper_compatible).x
    else:
        x = model.sir_sample(args.n, args.oversample, seed=args.seed).x
    source, data_dir = _data_of(args, _recorded_data(args.checkpoint))
    shape = open_data(source, data_dir).shape if (args.data or source != "digits") else None
    figure_panels([(f"samples ({args.method})", x)], out, cols=min(10, args.n), shape=shape)
    print(f"wrote {out}")
    return 0


def _inpaint(args) -> int:
    from .plotting import figure_panels

    out = output_file(args.out, "--out", ".png")
    device = _device(args.device)
    data = open_data(*_data_of(args, _recorded_data(args.checkpoint)))
    x = data.split(args.split)
    if x.shape[0] < 1:
        raise ValueError(f"the {args.split} split of --data {data.source} has no data points")
    x, chosen = random_rows(x, args.n, args.seed)  # not the first n: data files are often sorted by class
    mask = make_mask(x, args.mask, torch.Generator().manual_seed(args.seed), shape=data.shape, order=data.order)
    model = _load_model(args.checkpoint, device, args.backend)
    r = model.inpaint(x.to(device), mask.to(device), args.steps, args.k, seed=args.seed, progress=_progress(args))
    figure_panels([("data", x), ("observed (grey: hidden)", _masked(x, mask)), ("inpainted", r.x.cpu())],
                  out, cols=min(10, x.shape[0]), shape=data.shape, order=data.order,
                  title=f"{args.split} data of --data {data.source}: {chosen}")
    print(f"wrote {out}")
    return 0


def _demo(args) -> int:
    """Train on the bundled digits, print the test numbers, write one PNG."""
    args.data = "digits"
    _train(args, DEMO_DEFAULTS)
    device = _device(args.device)
    out = os.path.expanduser(args.out)
    model = _load_model(out, device, args.backend)
    test_x = load_split("digits", "test").to(device)
    print("evaluating on the test set ...")
    progress = _progress(args)
    seed = args.seed if args.seed is not None else DEMO_DEFAULTS["seed"]
    r = evaluate(model, test_x, k=args.eval_k, z_samples=args.z_samples, n_inner=args.n_inner, seed=seed,
                 progress=progress)
    print_evaluation(r)
    with open(os.path.join(out, "test.json"), "w") as f:
        json.dump(r, f, indent=2)
    png = os.path.join(out, "demo.png")
    overview_figure(model, test_x, png, steps=args.gibbs_steps, seed=seed, progress=progress,
                    title=f"BiHM {model.sizes} on 8x8 digits: test log p*(x) = {r['log_p_star']:.2f} nats",
                    shape=(8, 8), what="test data")
    print(f"wrote {png}")
    return 0


# ------------------------------------------------------------------------------------ parser


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    parse.__name__ = f"integer >= {lo}"
    return parse


def _seed(text: str) -> int:
    """A seed: an integer in [0, 2**63), the same rule for every command (and for the library)."""
    from .reference.philox import check_seed

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {text!r}") from None
    try:
        check_seed(v)  # the library's rule
    except ValueError:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2**63), got {v}") from None
    return v


def _config_value(name: str):
    """An argparse type for TrainConfig's field ``name``: the field's type, then TrainConfig's own check."""
    cast = {"int": int, "float": float}[str(TrainConfig.__dataclass_fields__[name].type).split()[0]]

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if cast is int else 'a number'}, got "
                                             f"{text!r}") from None
        try:
            TrainConfig(**{name: value})
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return value

    return parse


def _common(p: argparse.ArgumentParser, *, seed_default=0) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder of local copies of the registered sets (default $BIHM_DATA_DIR), e.g. the "
                        "project's shared data: binarized_mnist/, mnist/, uci/<name>/")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--seed", type=_seed, default=seed_default,
                   help="seed of every random choice, an integer in [0, 2**63) (default 0)")
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "cpu", "reference"),
                   help="auto: Triton on CUDA tensors, the CPU kernels for float32 on the CPU, the reference "
                   "otherwise (default auto)")
    p.add_argument("--threads", type=_int_at_least(1), default=1,
                   help="CPU threads for torch (default 1: these networks are small, and more threads fight "
                        "over a busy machine; try 2+ on an idle many-core machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per stage instead)")


def _train_options(p: argparse.ArgumentParser, defaults: dict, out: str, *, resume: bool) -> None:
    """The training options of ``train`` and ``demo``; ``resume``: the command has ``--resume``."""
    d = defaults
    p.add_argument("--sizes", default=None,
                   help=f"LATENT widths, bottom to top; the data width d_0 comes from the data: '200,100,50' or "
                        f"the authors' '<f>x-<n>l-<last>' (default {d['sizes']})")
    p.add_argument("--weight-norm", action="store_true", default=None, help="weight-normalized layers")
    p.add_argument("--deterministic-layers", type=_int_at_least(0), default=None,
                   help="the authors' option: tanh hidden layers inside every conditional (default 0)")
    for name, dest, flag, f in TRAIN_FIELDS:  # TrainConfig's fields: their defaults, help and checks
        more = "; with --resume: a new limit for the run" if name == "max_epochs" and resume else ""
        kind = {"choices": f.metadata["choices"]} if f.metadata.get("choices") else {"type": _config_value(name)}
        p.add_argument(flag, dest=dest, default=None, help=f"{f.metadata['help']} (default {d[dest]}{more})", **kind)
    p.add_argument("--out", default=out, help=f"run folder (default {out})")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bihm-triton", description=DESCRIPTION, formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train on the bundled 8x8 digits, evaluate, write demo.png")
    _train_options(p, DEMO_DEFAULTS, "bihm-demo", resume=False)
    p.add_argument("--eval-k", type=_int_at_least(1), default=1000, help="importance samples per test point (1000)")
    p.add_argument("--z-samples", type=_int_at_least(2), default=100_000, help="samples for log Z^2 (100000)")
    p.add_argument("--n-inner", type=_int_at_least(1), default=10, help="inner q-samples per Z^2 term (10)")
    p.add_argument("--gibbs-steps", type=_int_at_least(0), default=100, help="Gibbs sweeps for the figure (100)")
    _common(p, seed_default=None)
    p.set_defaults(func=_demo)

    p = sub.add_parser("train", help="train a BiHM (authors' defaults: K = 10, batch 100, Adam lr 1e-3)")
    p.add_argument("--data", default=None, help=DATA_HELP + " (with --resume: the run's own)")
    _train_options(p, TRAIN_DEFAULTS, "bihm-run", resume=True)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out with its own settings (give --epochs to raise its limit)")
    _common(p, seed_default=None)
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="likelihood estimates on a data split")
    p.add_argument("--checkpoint", required=True, help="run folder (its best.safetensors), a .safetensors file, or "
                   "pretrained:<name> (a model shipped with the package, e.g. pretrained:bmnist-12l)")
    p.add_argument("--data", default=None, help=DATA_HELP + " (default: the run's own, else digits)")
    p.add_argument("--split", default="test", choices=SPLITS, help="data split (default test)")
    p.add_argument("--k", type=_int_at_least(1), default=1000, help="importance samples per data point (1000)")
    p.add_argument("--z-samples", type=_int_at_least(2), default=100_000, help="samples of p for log Z^2 (100000)")
    p.add_argument("--n-inner", type=_int_at_least(1), default=10, help="q-samples per log Z^2 term (10)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--figure", default=None,
                   help="also write a PNG: 20 data points drawn at random (--seed), samples from p and p*, "
                        "inpaintings")
    p.add_argument("--gibbs-steps", type=_int_at_least(0), default=100, help="Gibbs sweeps for the figure (100)")
    _common(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser("sample", help="draw samples and save them as a PNG")
    p.add_argument("--checkpoint", required=True, help="run folder, .safetensors file, or pretrained:<name>")
    p.add_argument("--method", default="gibbs", choices=("p", "gibbs", "sir"),
                   help="p: ancestral samples of p; gibbs: exact Gibbs of p* (default); sir: importance resampling")
    p.add_argument("--n", type=_int_at_least(1), default=50, help="number of samples (50)")
    p.add_argument("--steps", type=_int_at_least(0), default=100, help="Gibbs sweeps (100)")
    p.add_argument("--k", type=_int_at_least(1), default=10, help="Gibbs candidates per update (10)")
    p.add_argument("--paper-compatible", action="store_true", help="the authors' (biased) Gibbs sampler")
    p.add_argument("--oversample", type=_int_at_least(1), default=100, help="SIR proposals per sample (100)")
    p.add_argument("--data", default=None, help="a --data source whose image shape the figure uses (optional)")
    p.add_argument("--out", default="samples.png", help="PNG to write (.png is added if missing)")
    _common(p)
    p.set_defaults(func=_sample)

    p = sub.add_parser("inpaint", help="complete partly hidden images and save a PNG")
    p.add_argument("--checkpoint", required=True, help="run folder, .safetensors file, or pretrained:<name>")
    p.add_argument("--data", default=None, help=DATA_HELP + " (default: the run's own, else digits)")
    p.add_argument("--split", default="test", choices=SPLITS, help="data split (default test)")
    p.add_argument("--n", type=_int_at_least(1), default=10,
                   help="images to inpaint, drawn at random from the split with --seed (10)")
    p.add_argument("--mask", default="bottom", choices=("bottom", "top", "left", "right", "random"),
                   help="which part is hidden (default bottom)")
    p.add_argument("--steps", type=_int_at_least(0), default=100, help="Gibbs sweeps (100)")
    p.add_argument("--k", type=_int_at_least(1), default=10, help="Gibbs candidates per update (10)")
    p.add_argument("--out", default="inpaint.png", help="PNG to write (.png is added if missing)")
    _common(p)
    p.set_defaults(func=_inpaint)

    from . import validation

    p = sub.add_parser("validate", help="check this install's kernels against the reference, op by op (exit 0: all "
                       "passed, 1: a check failed)", description=validation.__doc__.split("\n\n")[0])
    validation.add_arguments(p)
    p.set_defaults(func=lambda a: validation.run(a))
    return parser


def _launched_rank() -> int:
    """This process's rank under torchrun (``RANK`` with ``WORLD_SIZE`` > 1), else 0."""
    from .distributed import torchrun_world_size

    try:
        return int(os.environ.get("RANK", "0")) if torchrun_world_size() > 1 else 0
    except ValueError:
        return 0


def _run(args) -> int:
    """``args.func(args)``, under torchrun in the process group it sets up (rank 0 alone prints)."""
    from . import distributed

    if distributed.torchrun_world_size() <= 1:
        return args.func(args)
    if args.command not in ("train", "eval"):
        raise ValueError(f"'{args.command}' runs in one process: start it without torchrun (train and eval run "
                         f"on several)")
    with distributed.launch_from_env(_device(args.device)) as comm:
        with open(os.devnull, "w") as devnull, \
                (contextlib.redirect_stdout(devnull) if not comm.is_main else contextlib.nullcontext()):
            return args.func(args)


def _interrupt_note(e: KeyboardInterrupt, args) -> str:
    """What a Ctrl-C left behind and how to go on (one line)."""
    from .train import TrainingInterrupted

    if not isinstance(e, TrainingInterrupted):
        return ""
    note = f"; {e}"
    if e.saved:
        go_on = f"bihm-triton train --out {shlex.quote(e.out_dir)} --resume"
        note += (f"; continue it with: {go_on}" if args.command == "train"
                 else f"; continue its training with: {go_on} (or rerun the demo with --overwrite)")
    return note


def main(argv=None) -> int:
    parser = build_parser()
    rank = _launched_rank()
    with open(os.devnull, "w") as devnull, \
            (contextlib.redirect_stderr(devnull) if rank else contextlib.nullcontext()), \
            (contextlib.redirect_stdout(devnull) if rank else contextlib.nullcontext()):
        args = parser.parse_args(argv)  # usage errors and --help: once, from rank 0
    torch.set_num_threads(args.threads)
    prefix = f"bihm-triton {args.command}{f' (rank {rank})' if rank else ''}: error:"
    debug = bool(os.environ.get("BIHM_TRITON_DEBUG"))
    try:
        return _run(args)
    except KeyboardInterrupt as e:
        if debug:
            raise
        print(f"bihm-triton {args.command}: interrupted{_interrupt_note(e, args)}", file=sys.stderr)
        return 130
    except FloatingPointError as e:  # training diverged
        if debug:
            raise
        print(f"{prefix} {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        if debug:
            raise
        print(f"{prefix} {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
