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
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@cache_dir_option
def data_check(data_path: str, chart: str | None, as_json: bool, cache_dir: str | None) -> None:
    """Rows per split and class, duplicate images (within and across splits), constant images, balance chart."""
    from fer_experiments.data import check_dataset, format_report, load_dataset, plot_class_balance, report_to_dict

    ds = load_dataset(data_path, cache_dir=cache_dir)
    report = check_dataset(ds)
    stem = Path(data_path.rstrip("/")).name.split(".")[0] or "data"
    chart_path = plot_class_balance(report, chart or f"{stem}-class-balance.png")
    if as_json:
        click.echo(json.dumps(report_to_dict(report) | {"chart": str(chart_path), "digest": ds.digest}, indent=2))
        return
    for note in ds.notes:
        click.echo(f"note: {note}")
    click.echo(f"source: {ds.source}\ndigest: {ds.digest}")
    click.echo(format_report(report))
    click.echo(f"class-balance chart: {chart_path}")


@click.command()
def presets() -> None:
    """List the preset networks (the 2018 study's) with their parameter counts."""
    from fer_experiments.models.builder import build_model
    from fer_experiments.models.presets import PRESETS

    click.echo(f"{'preset':<18} {'params':>10}  description")
    for p in PRESETS.values():
        click.echo(f"{p.name:<18} {build_model(p.model).count_params():>10,}  {p.description}")
