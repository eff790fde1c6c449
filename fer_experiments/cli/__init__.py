"""``fer-exp``: a thin click shell. Parse options -> build one typed config -> call the library -> exit code.

One module per command family (``data``, ``train``, ``search``, ``ensemble``, ``registry``, ``serve``); options several commands
share are declared once in ``options``. Heavy libraries (TensorFlow, MLflow, Optuna) are imported inside the
commands so that ``--help`` is instant.
Exit codes: 0 ok, 2 bad config/usage, 3 bad data, 4 failed training, 5 fatal, 6 refused, 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import click

from fer_experiments.errors import EXIT_SIGINT, EXIT_SIGTERM, FatalError, FerError, Terminated


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _quiet() -> None:
    # Keep TensorFlow / MLflow start-up noise out of the user's terminal and home folder.
    # TensorFlow's C++ logger writes harmless lines at ERROR level (tf.data's "E0000 ... NodeDef mentions attribute
    # use_unbounded_threadpool", twice per trial), which level 2 still shows: level 3 silences its C++ log. Real
    # failures still surface as Python exceptions and as our own one-line errors. FER_EXP_DEBUG=1 keeps the
    # user's TF_CPP_MIN_LOG_LEVEL (TensorFlow's default when unset) for debugging TensorFlow itself.
    if os.environ.get("FER_EXP_DEBUG") != "1":
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        # ...and the oneDNN lines TensorFlow's import writes before reading that variable (cli/native_noise.py).
        from fer_experiments.cli.native_noise import filter_tensorflow_startup

        filter_tensorflow_startup()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DISABLE_TELEMETRY", "true")
    # MLflow configures its own loggers when imported (after this): its level must come from the environment.
    # ERROR keeps library advice (CloudPickle, requirement mismatches, ...) out of the commands' output.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the click group and map errors to exit codes with a one-line message."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="fer-exp")
    except click.exceptions.Abort as exc:
        # click turns KeyboardInterrupt (and so our SIGTERM exception) into Abort; the cause tells them apart.
        if isinstance(exc.__cause__, Terminated):
            click.echo("terminated (SIGTERM)", err=True)
            sys.exit(EXIT_SIGTERM)
        click.echo("interrupted", err=True)
        sys.exit(EXIT_SIGINT)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except FerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Terminated:
        click.echo("terminated (SIGTERM)", err=True)
        sys.exit(EXIT_SIGTERM)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_SIGINT)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:
        # A path that cannot be written or read (chart, --out folder, model file): one line, not a traceback.
        click.echo(f"error: {exc.filename or ''}: {exc.strerror or exc}".replace(": : ", ": "), err=True)
        sys.exit(FatalError.exit_code)
    except Exception as exc:  # noqa: BLE001 - the last resort: say what broke in one line; FER_EXP_DEBUG=1 shows it all
        if os.environ.get("FER_EXP_DEBUG") == "1":
            raise
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        click.echo(f"error: unexpected {type(exc).__name__}: {first} (set FER_EXP_DEBUG=1 for the traceback)", err=True)
        sys.exit(FatalError.exit_code)


#: Environment variables fer-exp reads, shown at the end of ``fer-exp --help`` (options that read one also say so
#: in their own help through ``show_envvar``).
ENVIRONMENT = (
    ("FER2013_CSV", "--data: the FER2013 CSV or image tree"),
    ("MLFLOW_TRACKING_URI", "--tracking-uri: the MLflow store [sqlite:///mlruns/mlflow.db]"),
    ("FER_EXP_STORAGE", "--storage: the Optuna storage [sqlite:///mlruns/optuna.db]"),
    ("FER_EXP_CACHE", "--cache-dir: the decoded-array cache [~/.cache/fer-exp]"),
    ("FER_EXP_GPU_LABEL", "the GPU a container runtime pinned, tagged on each trial"),
    ("FER_EXP_DEBUG", "1: full tracebacks, and TensorFlow's own C++ log level (otherwise silenced)"),
)
_EPILOG = "\b\nEnvironment variables:\n" + "\n".join(f"  {name:<20} {text}" for name, text in ENVIRONMENT)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}, epilog=_EPILOG)
@click.version_option(package_name="fer-experiments")
def cli() -> None:
    """fer-exp: search, track, promote and serve facial-expression CNNs (FER2013)."""
    _quiet()


def _register() -> None:
    """Add every command family's commands to the group (each lives in its own module of this package)."""
    from fer_experiments.cli import data, ensemble, explain, registry, report, search, serve, train

    for command in (data.data, data.presets, train.train, train.evaluate, search.search, search.worker,
                    search.reconcile, search.studies, search.compare_engines_command, report.report,
                    ensemble.ensemble, ensemble.distill, registry.promote,
                    registry.rollback, registry.models, serve.predict, serve.serve, explain.explain):
        cli.add_command(command)


_register()
