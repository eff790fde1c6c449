"""``python -m fer_experiments.cli``: the same as the ``fer-exp`` command."""

from fer_experiments.cli import main

main()
