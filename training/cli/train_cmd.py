"""``dask-train train``, ``generate``, ``evaluate`` and ``workloads``: one model, in this process."""

from __future__ import annotations

import contextlib
import difflib
import time
from collections.abc import Iterable
from pathlib import Path

import click

from ..errors import ConfigError, Interrupted
from ..limits import MAX_EPOCHS, MAX_GENERATE, PRECISIONS, short
from ..run_dirs import MODEL_MARKERS, check_run_dir, exclusive_run
from . import display

# The commands import torch (the loop, workloads, model files) when they run, not when the CLI loads:
# `--help` and argument errors answer at once.

_EXTRA = {"ignore_unknown_options": True, "allow_extra_args": True}

#: ``--allow-workload MODULE:CLASS``: the user's own workload that a file (model, run, sweep) may name.
def _module_classes(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    bad = [v for v in values if v.count(":") != 1 or not all(v.partition(":")[::2])]
    if bad:
        raise click.BadParameter(f"{short(bad[0])} is not MODULE:CLASS (e.g. mypkg.work:MyWorkload).")
    return values


allow_option = click.option(
    "--allow-workload", "allow", multiple=True, metavar="MODULE:CLASS", callback=_module_classes,
    help="Your own workload that the file may name (imported only when listed here; built-ins always are).")


def precision_option(default: str | None):
    """``--precision fp32|bf16|fp16`` (train, sweep, ddp); ``default`` None leaves a sweep file's own."""
    return click.option("--precision", type=click.Choice(PRECISIONS), default=default,
                        show_default=default is not None,
                        help="Mixed precision: bf16 (CPU or GPU) or fp16 (GPU only, with loss scaling)"
                             + ("; default: the sweep file's, else fp32." if default is None else "."))


def parse_param_args(args: list[str]) -> dict[str, str]:
    """``--batch-size 64 --lr=0.1`` -> ``{"batch_size": "64", "lr": "0.1"}`` (validated later)."""
    params: dict[str, str] = {}
    tokens = list(args)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"Unexpected argument {token!r}: hyperparameters are given as --name value.")
        name, eq, value = token[2:].partition("=")
        if not eq:
            if not tokens or tokens[0].startswith("--"):
                raise ConfigError(f"Hyperparameter --{name} needs a value: --{name} VALUE (see `dask-train "
                                  "workloads` for its kind and range).")
            value = tokens.pop(0)
        key = name.replace("-", "_")
        if key in params:
            raise ConfigError(f"Hyperparameter --{name} is given twice ({short(params[key])} and {short(value)}): "
                              "give it once.")
        params[key] = value
    return params


def check_not_options(params: dict[str, str], ctx: click.Context, known: Iterable[str]) -> None:
    """Refuse a "hyperparameter" that is a misspelt option of the command (``--epoch`` for ``--epochs``), not
    one of the workload's (``known``): its own message would list the hyperparameters only."""
    known = list(known)
    options = [o[2:] for p in ctx.command.params for o in getattr(p, "opts", ()) if o.startswith("--")]
    for key in params:
        name = key.replace("_", "-")
        if key not in known and not difflib.get_close_matches(key, known, n=1):
            close = difflib.get_close_matches(name, options, n=1)
            if close:
                raise ConfigError(f"Unknown option --{name}. Did you mean --{close[0]}? (see `{ctx.command_path} "
                                  "--help`)")


@click.command(context_settings=_EXTRA)
@click.argument("workload")
@click.option("--epochs", type=int, default=None, help="Epochs (default: the workload's).")
@click.option("--out", "out_name", default=None, metavar="DIRECTORY",
              help="Model directory to write (default: a new runs/<workload>-<time>).")
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True,
              help="Seeds data split, weights, batch order.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out.")
@precision_option("fp32")
@click.pass_context
def train_command(ctx: click.Context, workload: str, epochs: int | None, out_name: str | None, seed: int,
                  device: str, resume: bool, precision: str) -> None:
    """Train WORKLOAD in this process and save the model. Hyperparameters: --name value
    (see `dask-train workloads`)."""
    from ..loop import check_resumable_file, checked_run, train
    from ..workloads import get_workload, workload_ref
    from .epoch_table import EpochTable

    work = get_workload(workload)
    params = parse_param_args(ctx.args)
    check_not_options(params, ctx, (p.name for p in work.params))
    total = epochs if epochs is not None else work.default_epochs
    if total > MAX_EPOCHS:
        raise ConfigError(f"Invalid epochs {total}: at most {MAX_EPOCHS:,}.")
    if out_name is not None and not out_name.strip():
        raise ConfigError("--out is empty: name the model directory to write, e.g. --out runs/my-model.")
    if resume and out_name is None:
        raise ConfigError("--resume needs --out: the model directory whose checkpoint to continue.")
    resolved = checked_run(work, params, total, seed, device, precision)[0]  # before a folder is made for it
    made = [] if out_name is not None or Path("runs").exists() else [Path("runs")]  # what a failure removes
    if out_name is None:
        out = _new_model_dir(Path("runs") / f"{work.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        made.insert(0, out)
    else:
        out = Path(out_name)
        if (out / "model").is_dir() and not (out / "model.json").is_file():
            raise ConfigError(f"{out} is a DDP job's run directory (`dask-train ddp`; its model is in "
                              f"{out / 'model'}), not one `train` writes: choose another --out.")
        check_run_dir(out, MODEL_MARKERS, what="model directory")
        if not out.exists():
            made.insert(0, out)  # removed again if training fails before writing anything
        held = [m for m in MODEL_MARKERS if (out / m).is_file()]
        if held and not resume:  # another run's model: replaced only by continuing it
            raise ConfigError(f"{out} already holds a trained model ({', '.join(held)}). Pass --resume to "
                              "continue it, or choose another --out.")
        if resume:  # before the data loads
            check_resumable_file(out / "checkpoint.pt", workload_ref(work), resolved, seed, precision)
    display.console.print(f"Training {work.name} for {total} epochs into {out}{' (resuming)' if resume else ''}.",
                          soft_wrap=True)  # before the first epoch's row, which may be minutes away
    with exclusive_run(out, "training", "choose another --out"):  # until its model is saved
        try:
            with EpochTable(work.name, total) as progress:
                trained = train(work, params, epochs=total, seed=seed, device=device, callback=progress,
                                checkpoint=out / "checkpoint.pt", resume=resume, precision=precision)
        except BaseException as exc:
            for folder in made:  # the folders made for this run, while still empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
            if isinstance(exc, KeyboardInterrupt) and (out / "checkpoint.pt").is_file():
                kept = Interrupted(f"{out} keeps the checkpoint of its last finished epoch (its model is written "
                                   "when training ends).")
                named = () if out_name is not None else ("--out", str(out))
                display.interrupted(kept, add=(*named, "--resume"))
            raise
        if resume and progress.trained == 0:
            display.console.print(f"Nothing left to train: the checkpoint in {out} is already at epoch "
                                  f"{len(trained.history)} of {total}; pass a larger --epochs to train on.")
        trained.save(out, overwrite=True)  # checked above: --resume continues it
    epochs, metric = len(trained.history), work.metric
    resumed = f"; resumed after epoch {epochs - progress.trained}" if resume and progress.trained else ""
    display.console.print(f"Saved model to {out}: its best epoch by {metric}, {trained.best_epoch or epochs} of "
                          f"{epochs} ({metric}={display.format_value(trained.metrics.get(metric))}){resumed}",
                          soft_wrap=True)
    display.show_use(trained, "Generated", seed)


def _new_model_dir(base: Path) -> Path:
    """A model directory of ``base``'s name (``-2``, ``-3``... when taken), created here, so two runs started in
    the same second never share one."""
    check_run_dir(base, MODEL_MARKERS, what="model directory")  # the folder it goes in can be written
    for n in range(1, 1000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"{base} and 998 more of its name are taken: pass --out.")


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("-n", "count", type=click.IntRange(min=1, max=MAX_GENERATE), default=None,
              help=f"How many names, or characters of text (default: 20 names, 400 characters; at most "
                   f"{MAX_GENERATE:,}).")
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=None,
              help="Sampling seed (default: random).")
@click.option("--prompt", default="", help="Start of every sample.")
@allow_option
def generate_command(model_dir: Path, count: int | None, seed: int | None, prompt: str,
                     allow: tuple[str, ...]) -> None:
    """Sample names or text from a trained names/charlm model."""
    from ..model_file import load_model

    trained = load_model(model_dir, allow=allow)
    _require_use(trained.workload, "generate")
    count = count or display.GENERATE_DEFAULT.get(trained.workload, 10)
    with display.working(f"Sampling {count:,} {'names' if trained.workload == 'names' else 'characters'}"):
        samples = trained.generate(count, seed=seed, prompt=prompt)
    for sample in samples:
        display.console.print(sample)


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@allow_option
def evaluate_command(model_dir: Path, allow: tuple[str, ...]) -> None:
    """Report a trained digits/xor/linreg model on its held-out test data."""
    from ..model_file import load_model

    trained = load_model(model_dir, allow=allow)
    _require_use(trained.workload, "evaluate")
    display.report({"workload": trained.workload, **trained.evaluate()})


def _require_use(workload: str, use: str) -> None:
    from ..workloads import get_workload

    if get_workload(workload).use != use:
        other = "generate" if use == "evaluate" else "evaluate"
        raise ConfigError(f"A {workload} model does not {use}; use `dask-train {other}` instead.")


@click.command()
def workloads_command() -> None:
    """List the built-in workloads and their hyperparameters."""
    from ..workloads import BUILTIN

    for work in BUILTIN.values():
        display.table(
            f"{work.name}: {work.summary} (default {work.default_epochs} epochs, "
            f"optimises {work.metric} {work.mode})",
            ["hyperparameter", "default", "accepts", "meaning"],
            ([p.name, repr(p.default), p.describe(), p.help] for p in work.params),
        )
