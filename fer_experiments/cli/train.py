"""``fer-exp train`` and ``fer-exp evaluate``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from fer_experiments.cli.options import (
    FiniteFloatRange,
    cache_dir_option,
    data_option,
    limit_option,
    parse_overrides,
    tracking_option,
    tracking_uri_or_default,
)
from fer_experiments.config import DEFAULT_EXPERIMENT

if TYPE_CHECKING:
    from fer_experiments.registry.evaluate import SplitPredictions


@click.command()
@data_option()
@click.option("--preset", default="seed-base", show_default=True, help="Network to train (see `fer-exp presets`).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the preset's epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Override the preset's batch size.")
@click.option("--learning-rate", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Override the preset's (initial) learning rate.")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Override any model/training parameter, e.g. --set batchnorm=none --set augment_flip=true.")
@limit_option
@click.option("--seed", type=int, default=None, help="Training seed (same seed, same metrics on CPU).")
@click.option("--objective", type=click.Choice(["val_accuracy", "val_macro_f1"]), default="val_accuracy",
              show_default=True, help="PublicTest metric that selects the best epoch.")
@click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True, help="MLflow experiment name.")
@click.option("--run-name", default=None, help="MLflow run name [default: MLflow's generated name].")
@tracking_option
@cache_dir_option
def train(data_path: str, preset: str, epochs: int | None, batch_size: int | None, learning_rate: float | None,
          overrides: tuple[str, ...], limit: int | None, seed: int | None, objective: str, experiment: str,
          run_name: str | None, tracking_uri: str | None, cache_dir: str | None) -> None:
    """Train one network as one MLflow run and print its PublicTest report."""
    from fer_experiments import api
    from fer_experiments.evaluation.metrics import format_report
    from fer_experiments.tracking import ui_command

    epochs_of_plan: list[int] = []  # the epoch lines say "epoch i/n"

    def on_start(plan: "api.TrainPlan") -> None:
        for note in plan.notes:
            click.echo(f"note: {note}")
        click.echo(f"training {plan.preset} on {plan.train_rows} Training rows, selecting on {plan.val_rows} "
                   f"PublicTest rows, {plan.epochs} epoch(s)")
        epochs_of_plan.append(plan.epochs)

    def on_epoch(epoch: int, m: dict[str, float]) -> None:
        click.echo(f"epoch {epoch}/{epochs_of_plan[0]}: loss {m['loss']:.4f} acc {m['accuracy']:.4f} | "
                   f"PublicTest loss {m['val_loss']:.4f} acc {m['val_accuracy']:.4f} macro-F1 {m['val_macro_f1']:.4f}")

    result = api.train(data_path, preset, params=parse_overrides(overrides), epochs=epochs, batch_size=batch_size,
                       learning_rate=learning_rate, seed=seed, limit=limit, objective=objective,
                       experiment=experiment, run_name=run_name, tracking_uri=tracking_uri_or_default(tracking_uri),
                       cache_dir=cache_dir, on_start=on_start, on_epoch=on_epoch)
    click.echo(f"\nbest epoch {result.best_epoch} of {result.epochs_run} "
               f"({result.images_per_second:.0f} train images/s)")
    click.echo(format_report(result.evaluation))
    click.echo(f"run: {result.run_id}\nmodel: {result.model_uri}")
    click.echo(f"see it with: {ui_command(result.tracking_uri, result.experiment_id)}")


@click.command()
@click.argument("model_uri")
@data_option()
@click.option("--split", type=click.Choice(["Training", "PublicTest", "PrivateTest"]), default="PrivateTest",
              show_default=True, help="The split to evaluate on.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also write a grid of faces with their true and predicted labels (mistakes framed in red) here, "
                   "and the most confident mistakes beside it (<name>-mistakes.png); logged to the model's run too.")
@click.option("--per-class", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Faces per true class in the --grid.")
@click.option("--mistakes", type=click.IntRange(1, 200), default=24, show_default=True,
              help="How many of the most confident mistakes the second grid shows.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the faces drawn for the --grid.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@tracking_option
@cache_dir_option
def evaluate(model_uri: str, data_path: str, split: str, grid: str | None, per_class: int, mistakes: int, seed: int,
             as_json: bool, tracking_uri: str | None, cache_dir: str | None) -> None:
    """Accuracy, macro-F1 and per-class precision/recall/F1 of MODEL_URI on a split.

    MODEL_URI: runs:/<run_id>/model, models:/<name>/<version>, models:/<name>@<alias> or a local path.
    With --grid, the prediction grids are also logged to the model's MLflow run (runs:/ and registered models).
    """
    from fer_experiments import api
    from fer_experiments.evaluation.metrics import format_report

    result = api.evaluate(model_uri, data_path, split, tracking_uri=tracking_uri, cache_dir=cache_dir)
    ev = result.evaluation
    grids = (_write_grids(result.predictions, model_uri, grid, per_class, mistakes, seed, tracking_uri) if grid
             else {})
    if as_json:
        click.echo(json.dumps({"model": model_uri, "data_digest": result.data_digest} | ev.to_dict() | grids,
                              indent=2))
    else:
        click.echo(f"model: {model_uri}")
        click.echo(format_report(ev))
        for key, value in grids.items():
            click.echo(f"{key.replace('_', ' ')}: {value}")


def _write_grids(found: "SplitPredictions", model_uri: str, grid: str, per_class: int, mistakes: int, seed: int,
                 tracking_uri: str | None) -> dict[str, str]:
    """Write the prediction grid and the mistakes grid; log both to the model's run when it has one."""
    from pathlib import Path

    from fer_experiments.evaluation.grids import mistakes_grid, prediction_grid
    from fer_experiments.evaluation.plots import save_figure
    from fer_experiments.tracking import TrackedRun
    from fer_experiments.tracking.model_io import model_run_id

    split = found.evaluation.split
    x, y, probs = found.split.x, found.split.y, found.probabilities
    path = Path(grid)
    mistakes_path = path.with_name(f"{path.stem}-mistakes{path.suffix or '.png'}")
    pred_fig, _ = prediction_grid(x, y, probs, per_class, seed, label=split)
    wrong_fig, _ = mistakes_grid(x, y, probs, mistakes, label=split)
    save_figure(pred_fig, str(path))
    save_figure(wrong_fig, str(mistakes_path))
    out = {"grid": str(path), "mistakes_grid": str(mistakes_path)}
    run_id = model_run_id(model_uri, tracking_uri)
    if run_id is not None:
        run = TrackedRun(run_id, tracking_uri_or_default(tracking_uri))
        run.log_figure(pred_fig, f"grids/{split}_predictions.png")
        run.log_figure(wrong_fig, f"grids/{split}_mistakes.png")
        out["logged_to_run"] = run_id
    return out
