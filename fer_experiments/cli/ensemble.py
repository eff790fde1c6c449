"""``fer-exp ensemble`` and ``fer-exp distill``."""

from __future__ import annotations

import click

from fer_experiments.cli.options import (
    AliasName,
    FiniteFloatRange,
    cache_dir_option,
    data_option,
    fmt,
    limit_option,
    model_name_option,
    parse_overrides,
    tracking_option,
    tracking_uri_or_default,
)
from fer_experiments.config import DEFAULT_CHALLENGER_ALIAS
from fer_experiments.ensembles.members import MAX_TOP


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


@click.command()
@click.option("--study", required=True, help="The study whose best models to ensemble (any engine).")
@click.option("--top", type=click.IntRange(1, MAX_TOP), default=3, show_default=True,
              help="K: the study's best K models (its refit models if it has any, else its COMPLETE trials); "
                   "for greedy also the most additions.")
@click.option("--method", type=click.Choice(["mean", "greedy"]), default="mean", show_default=True,
              help="mean: average the K members' probabilities; greedy: ensemble selection with replacement on "
                   "PublicTest (members weighted by how often they were picked).")
@data_option()
@model_name_option("Registered model to add the ensemble to as a new version.")
@click.option("--alias", type=AliasName(), default=DEFAULT_CHALLENGER_ALIAS, show_default=True,
              help="Alias to point at the new version.")
@click.option("--no-register", is_flag=True, help="Log the ensemble run only; leave the registry alone.")
@click.option("--experiment", default=None, help="MLflow experiment [default: the study's].")
@click.option("--run-name", default=None, help="MLflow run name [default: ensemble-<method>-top<K>].")
@tracking_option
@cache_dir_option
def ensemble(study: str, top: int, method: str, data_path: str, model_name: str, alias: str, no_register: bool,
             experiment: str | None, run_name: str | None, tracking_uri: str | None, cache_dir: str | None) -> None:
    """Ensemble a study's best K models into one model, log it as a run and register it (alias challenger).

    `fer-exp promote --run <run>` then guards and promotes it like any model.
    """
    from fer_experiments.ensembles import EnsembleConfig, make_ensemble
    from fer_experiments.evaluation.metrics import format_report

    cfg = EnsembleConfig(tracking_uri=tracking_uri_or_default(tracking_uri), study=study, data_path=data_path,
                         top=top, method=method, model_name=model_name, alias=alias, register=not no_register,
                         experiment=experiment, run_name=run_name, cache_dir=cache_dir)
    out = make_ensemble(cfg, echo=click.echo)
    click.echo(f"\n{'member':<36} {'weight':>7} {'PublicTest acc':>15} {'params':>10}")
    for c in out.candidates:
        click.echo(f"{c.member.label() + ' ' + c.member.run_id[:12]:<36} {c.weight:>7.3f} "
                   f"{c.public_accuracy:>15.4f} {c.n_params:>10,}")
    click.echo(f"\n{'':<16} {'PublicTest acc':>15} {'macro-F1':>9} {'params':>10} {'faces/s (1 at a time)':>22}")
    click.echo(f"{'ensemble':<16} {out.evaluation.accuracy:>15.4f} {out.evaluation.macro_f1:>9.4f} "
               f"{out.n_params:>10,} {_rate(out.faces_per_second):>22}")
    click.echo(f"{'best member':<16} {out.best.public_accuracy:>15.4f} {'':>9} {out.best.n_params:>10,} "
               f"{_rate(out.best_faces_per_second):>22}")
    click.echo("\n" + format_report(out.evaluation))
    for note in out.notes:
        click.echo(f"note: {note}")
    click.echo(f"run: {out.run_id}\nmodel: runs:/{out.run_id}/model")
    if out.version:
        click.echo(f"registered {model_name} version {out.version}; {model_name}@{alias} -> version {out.version}")
    click.echo(f"promote it with: fer-exp promote --run {out.run_id} --data {data_path}")


@click.command()
@click.option("--run", "run_id", required=True, help="The teacher: an ensemble run (any run with a logged model).")
@data_option(required=False)
@click.option("--student", "preset", default=None,
              help="Student network preset (see `fer-exp presets`) [default: the ensemble's best member's network].")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override a student model/training parameter, e.g. --set filters=16.")
@click.option("--temperature", type=FiniteFloatRange(0, 100, min_open=True), default=4.0, show_default=True,
              help="Softmax temperature of the soft targets.")
@click.option("--alpha", type=FiniteFloatRange(0, 1), default=0.3, show_default=True,
              help="Weight of the true labels' loss (1 - alpha on the teacher's soft targets).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the student's epochs.")
@limit_option
@model_name_option("Registered model to add the student to as a new version.")
@click.option("--alias", type=AliasName(), default=DEFAULT_CHALLENGER_ALIAS, show_default=True,
              help="Alias to point at the new version.")
@click.option("--no-register", is_flag=True, help="Log the student's run only; leave the registry alone.")
@click.option("--experiment", default=None, help="MLflow experiment [default: the teacher's].")
@click.option("--run-name", default=None, help="MLflow run name [default: distilled].")
@tracking_option
@cache_dir_option
def distill(run_id: str, data_path: str | None, preset: str | None, overrides: tuple[str, ...], temperature: float,
            alpha: float, epochs: int | None, limit: int | None, model_name: str, alias: str, no_register: bool,
            experiment: str | None, run_name: str | None, tracking_uri: str | None, cache_dir: str | None) -> None:
    """Train one student network on Training against an ensemble's probabilities (knowledge distillation).

    Logged like any training (fer.kind=distilled, the teacher's run ID as a param) and registered (alias challenger).
    """
    from fer_experiments.ensembles import DistillConfig, distill_ensemble
    from fer_experiments.evaluation.metrics import format_report

    cfg = DistillConfig(tracking_uri=tracking_uri_or_default(tracking_uri), teacher_run_id=run_id,
                        data_path=data_path, student_preset=preset, overrides=parse_overrides(overrides),
                        temperature=temperature, alpha=alpha, epochs=epochs, limit=limit, model_name=model_name,
                        alias=alias, register=not no_register, experiment=experiment, run_name=run_name,
                        cache_dir=cache_dir)

    def on_epoch(epoch: int, m: dict[str, float]) -> None:
        click.echo(f"epoch {epoch}: loss {m['loss']:.4f} | PublicTest acc {m['val_accuracy']:.4f} "
                   f"macro-F1 {m['val_macro_f1']:.4f}")

    out = distill_ensemble(cfg, on_epoch=on_epoch, echo=click.echo)
    r = out.result
    click.echo(f"\nbest epoch {r.best_epoch} of {r.epochs_run}; student PublicTest acc {r.evaluation.accuracy:.4f} "
               f"(teacher {fmt(out.teacher_public_accuracy)}); {out.n_params:,} params, "
               f"{_rate(out.faces_per_second)} faces/s one at a time")
    click.echo(format_report(r.evaluation))
    click.echo(f"run: {out.run_id}\nmodel: runs:/{out.run_id}/model")
    if out.version:
        click.echo(f"registered {model_name} version {out.version}; {model_name}@{alias} -> version {out.version}")
