"""``fer-exp data check`` and ``fer-exp presets``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fer_experiments.cli.options import cache_dir_option, data_option


@click.group()
def data() -> None:
    """Inspect and validate a data set."""


@data.command("check")
@data_option()
@click.option("--chart", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Where to write the class-balance bar chart [default: <data name>-class-balance.png].")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Where to write the grid of sample faces per class [default: <data name>-samples.png].")
@click.option("--per-class", type=click.IntRange(1, 50), default=8, show_default=True,
              help="Sample faces per class in the grid.")
@click.option("--grid-split", type=click.Choice(["Training", "PublicTest", "PrivateTest"]), default="Training",
              show_default=True, help="The split the sample faces come from.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample faces drawn.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@cache_dir_option
def data_check(data_path: str, chart: str | None, grid: str | None, per_class: int, grid_split: str, seed: int,
               as_json: bool, cache_dir: str | None) -> None:
    """Rows per split and class, duplicate images (within and across splits), constant images, balance chart and
    a grid of sample faces per class."""
    from fer_experiments.data import check_dataset, format_report, load_dataset, plot_class_balance, report_to_dict
    from fer_experiments.evaluation.grids import sample_grid
    from fer_experiments.evaluation.plots import save_figure

    ds = load_dataset(data_path, cache_dir=cache_dir)
    report = check_dataset(ds)
    stem = Path(data_path.rstrip("/")).name.split(".")[0] or "data"
    chart_path = plot_class_balance(report, chart or f"{stem}-class-balance.png")
    part = ds.split(grid_split)
    grid_path = Path(grid or f"{stem}-samples.png")
    save_figure(sample_grid(part.x, part.y, per_class, seed,
                            title=f"{Path(ds.source).name}, {grid_split}: {per_class} random faces per class "
                                  f"(seed {seed})"), str(grid_path))
    if as_json:
        click.echo(json.dumps(report_to_dict(report) | {"chart": str(chart_path), "grid": str(grid_path),
                                                        "digest": ds.digest}, indent=2))
        return
    for note in ds.notes:
        click.echo(f"note: {note}")
    click.echo(f"source: {ds.source}\ndigest: {ds.digest}")
    click.echo(format_report(report))
    click.echo(f"class-balance chart: {chart_path}")
    click.echo(f"sample faces: {grid_path}")


@click.command()
def presets() -> None:
    """List the preset networks (the 2018 study's) with their parameter counts."""
    from fer_experiments.models.builder import build_model
    from fer_experiments.models.presets import PRESETS

    click.echo(f"{'preset':<18} {'params':>10}  description")
    for p in PRESETS.values():
        click.echo(f"{p.name:<18} {build_model(p.model).count_params():>10,}  {p.description}")
