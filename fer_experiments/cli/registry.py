"""``fer-exp promote``, ``rollback`` and ``models``."""

from __future__ import annotations

import json

import click

from fer_experiments.cli.options import (
    FiniteFloatRange,
    alias_option,
    cache_dir_option,
    data_option,
    fmt,
    model_name_option,
    tracking_option,
    tracking_uri_or_default,
)


@click.command()
@click.option("--study", default=None, help="Promote the best COMPLETE trial of this study.")
@click.option("--run", "run_id", default=None, help="Promote this MLflow run instead.")
@data_option(required=False, help_text="For the PrivateTest report [default: the data set logged with the run, "
                                       "when that file is here with the same digest].")
@model_name_option()
@alias_option
@click.option("--force", is_flag=True, help="Move the alias even if the candidate is worse.")
@click.option("--dry-run", is_flag=True, help="Show the comparison, change nothing.")
@click.option("--min-accuracy", type=FiniteFloatRange(0, 1), default=None, help="Refuse candidates below this "
              "PublicTest accuracy.")
@click.option("--max-latency-ms", type=FiniteFloatRange(min=0, min_open=True, max=60_000), default=None,
              help="With --study: the most accurate trial or refit that serves one face within this many ms "
                   "(measured on this machine); exit 6 when none does.")
@click.option("--runtime", "cost_runtime", type=click.Choice(["exported", "int8"]), default="exported",
              show_default=True, help="The serving runtime --max-latency-ms is measured on.")
@tracking_option
@cache_dir_option
def promote(study: str | None, run_id: str | None, data_path: str | None, model_name: str, alias: str, force: bool,
            dry_run: bool, min_accuracy: float | None, max_latency_ms: float | None, cost_runtime: str,
            tracking_uri: str | None, cache_dir: str | None) -> None:
    """Register the best model and move the champion alias to it, refusing a worse one unless --force."""
    from fer_experiments import api

    r = api.promote(study, run_id, data=data_path, model_name=model_name, alias=alias, force=force, dry_run=dry_run,
                    min_accuracy=min_accuracy, tracking_uri=tracking_uri_or_default(tracking_uri), cache_dir=cache_dir,
                    max_latency_ms=max_latency_ms, runtime=cost_runtime)
    # An ensemble or distilled run belongs to a study but to no trial.
    source = (f"study {r.study}" + (f" trial {r.trial}" if r.trial is not None else "")) if r.study else "run"
    click.echo(f"{'':<20} {'version':>8} {'PublicTest acc':>15} {'PrivateTest acc':>16}  source")
    click.echo(f"{'candidate':<20} {r.version or '-':>8} {fmt(r.public_accuracy):>15} {fmt(r.private_accuracy):>16}  "
               f"{source} (run {r.run_id})")
    click.echo(f"{model_name + '@' + alias:<20} {r.champion_version or '-':>8} "
               f"{fmt(r.champion_public_accuracy):>15} {fmt(r.champion_private_accuracy):>16}")
    if r.decision == "already":
        click.echo(f"run {r.run_id} is already {model_name}@{alias} (version {r.version}); nothing changed")
    elif r.decision == "dry-run":
        known = f" (already registered as version {r.version})" if r.version else ""
        click.echo(f"dry run: the candidate{known} would be promoted; nothing changed")
    else:
        made = "registered" if r.created_version else "reused"
        click.echo(f"{made} {model_name} version {r.version}; {model_name}@{alias} -> version {r.version}"
                   + (f" (was {r.champion_version})" if r.champion_version else ""))
        click.echo(f"load it as models:/{model_name}@{alias}")
    for note in r.notes:
        click.echo(f"note: {note}")


@click.command()
@model_name_option()
@alias_option
@tracking_option
def rollback(model_name: str, alias: str, tracking_uri: str | None) -> None:
    """Point the champion alias back at the version it pointed at before."""
    from fer_experiments import api

    r = api.rollback(model_name, alias, tracking_uri=tracking_uri_or_default(tracking_uri))
    click.echo(f"{model_name}@{alias}: version {r.from_version} -> version {r.to_version}")


@click.command()
@model_name_option("Only this registered model [default: all but the serving wrappers].", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
@tracking_option
def models(model_name: str | None, as_json: bool, tracking_uri: str | None) -> None:
    """Registered models: versions, aliases, source study/trial, PublicTest and PrivateTest numbers."""
    import dataclasses

    from fer_experiments import api

    rows = api.models(model_name, tracking_uri=tracking_uri_or_default(tracking_uri))
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo("no registered models")
        return
    click.echo(f"{'model':<10} {'version':>7} {'aliases':<28} {'study':<12} {'trial':>5} {'pub acc':>8} "
               f"{'pub F1':>8} {'priv acc':>8} {'priv F1':>8}")
    for r in rows:
        click.echo(f"{r.name:<10} {r.version:>7} {','.join(r.aliases) or '-':<28} {r.study or '-':<12} "
                   f"{r.trial or '-':>5} {fmt(r.public_accuracy):>8} {fmt(r.public_macro_f1):>8} "
                   f"{fmt(r.private_accuracy):>8} {fmt(r.private_macro_f1):>8}"
                   + ("  ARTIFACTS MISSING" if r.missing else ""))
    for r in rows:
        if r.missing:
            click.echo(f"warning: {r.name} version {r.version}"
                       f"{' (' + ','.join(r.aliases) + ')' if r.aliases else ''} cannot be loaded: {r.missing}")
