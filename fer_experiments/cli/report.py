"""``fer-exp report``: a study's self-contained HTML report."""

from __future__ import annotations

import click

from fer_experiments.cli.options import storage_option, tracking_option, tracking_uri_or_default


@click.command()
@click.option("--study", required=True, help="The study to report on (any engine).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write [default: report-<study>.html in the working folder].")
@tracking_option
@storage_option
def report(study: str, out_path: str | None, tracking_uri: str | None, storage: str) -> None:
    """One self-contained HTML page about a study: settings, outcome, history, importances, per-class F1 against
    the 2018 networks, the best trial's confusion matrix and curves, and every trial linked to its MLflow run.
    Opens offline from the file; searches also log it as summary/report.html on the study's run."""
    from pathlib import Path

    from fer_experiments.io import atomic_write_text
    from fer_experiments.search.report import study_report
    from fer_experiments.search.study import study_in_storage

    uri = tracking_uri_or_default(tracking_uri)
    page = study_report(study, uri, storage if study_in_storage(storage, study) else None)
    out = Path(out_path or f"report-{study}.html")
    atomic_write_text(out, page)
    click.echo(f"wrote {out} ({len(page) // 1024} KiB); open it in a browser (works offline)")
