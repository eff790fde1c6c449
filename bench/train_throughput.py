"""Benchmark: fer-exp's training loop (``train_model``) against a bare ``model.fit`` on the same model and data.

Both sides train the same network (same ModelParams, ``build_model`` + ``compile_model``) on the same stratified
Training subset with the same batch size, and both do one validation pass over the same PublicTest subset per epoch:
``train_model`` through its per-epoch evaluator (one predict pass, numpy metrics, best weights kept, plus the
ReduceLROnPlateau callback when the preset's schedule asks for it), the bare fit through
``validation_data=(PublicTest subset)``. They run in one process, alternating (fer, bare, fer, bare, ...), after one
uncounted warm-up of each. Images/s = (train rows * epochs) / wall time of the whole call:
``train_model(...)`` for fer-exp, ``build_model`` + ``compile_model`` + ``model.fit(...)`` for the bare side
(the same work ``train_model`` does before and around its fit). Target: fer / bare >= 0.97.

    python bench/train_throughput.py [--data PATH] [--preset seed-deep-bn] [--filters 16] [--train-rows 2000]
                                     [--val-rows 1000] [--epochs 2] [--rounds 3] [--batch-size N] [--strict]
"""

from __future__ import annotations

import _common  # noqa: I001 - first: sets the environment before TensorFlow/Keras are imported

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

TARGET_RATIO = 0.97


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=_common.default_data_path(),
                    help="FER2013 CSV (.csv/.csv.gz) or image tree; default $FER2013_CSV or %(default)s")
    ap.add_argument("--cache-dir", default=_common.default_cache_dir(),
                    help="decoded-data cache (default $FER_EXP_CACHE or %(default)s)")
    ap.add_argument("--preset", default="seed-deep-bn", help="network preset (default %(default)s)")
    ap.add_argument("--filters", type=int, default=16,
                    help="base filters, overriding the preset's (default %(default)s: a quarter of seed-deep-bn's 64); "
                         "0 keeps the preset's")
    ap.add_argument("--train-rows", type=int, default=2000, help="stratified Training subset (default %(default)s)")
    ap.add_argument("--val-rows", type=int, default=1000, help="stratified PublicTest subset (default %(default)s)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of every timed fit (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of each side (default %(default)s)")
    ap.add_argument("--warmup-epochs", type=int, default=1,
                    help="epochs of the uncounted warm-up of each side (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=0, help="batch size (default: the preset's)")
    ap.add_argument("--seed", type=int, default=42, help="training and subset seed (default %(default)s)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the median ratio misses the target")
    args = ap.parse_args(argv)
    if not Path(args.data).exists():
        print(f"no data at {args.data} (use --data or FER2013_CSV)", file=sys.stderr)
        return 2

    _common.quiet_libraries()
    print(_common.machine_line())
    t0 = time.perf_counter()
    import keras

    from fer_experiments.data import Split, load_dataset, stratified_subset
    from fer_experiments.models.builder import build_model, count_params
    from fer_experiments.models.presets import get_preset
    from fer_experiments.training.trainer import as_model_input, class_weights, compile_model, one_hot, train_model

    print(f"imports: {time.perf_counter() - t0:.1f} s (keras backend {keras.backend.backend()})")

    t0 = time.perf_counter()
    ds = load_dataset(args.data, cache_dir=args.cache_dir)
    train = stratified_subset(ds.split("Training"), args.train_rows, seed=args.seed)
    val = stratified_subset(ds.split("PublicTest"), args.val_rows, seed=args.seed)
    print(f"data: {args.data} ({ds.summary()}), loaded in {time.perf_counter() - t0:.1f} s")

    preset = get_preset(args.preset)
    model_params = preset.model if args.filters <= 0 else dataclasses.replace(preset.model, filters=args.filters)
    train_params = dataclasses.replace(preset.train, epochs=args.epochs, seed=args.seed,
                                       **({"batch_size": args.batch_size} if args.batch_size > 0 else {}))
    n_params = count_params(build_model(model_params, train_params))
    print(f"model: preset {args.preset}, filters {model_params.filters} {model_params.block_filters()}, "
          f"batchnorm {model_params.batchnorm}, {n_params:,} parameters")
    print(f"training: batch size {train_params.batch_size}, optimizer {train_params.optimizer}, lr schedule "
          f"{train_params.lr_schedule}, {args.epochs} epochs per timed fit, warm-up {args.warmup_epochs} epoch(s)")
    print(f"rows: Training subset {len(train):,}, PublicTest subset {len(val):,} (same subsets on both sides)")

    # Inputs prepared once, as train_model prepares them (uint8 view, float32 one-hot).
    x_train, y_train = as_model_input(train.x), one_hot(train.y)
    x_val, y_val = as_model_input(val.x), one_hot(val.y)
    weights = class_weights(train.y, train_params.class_weight)

    class _PhaseTimer(keras.callbacks.Callback):
        """Seconds of the training phase of each epoch (epoch begin -> validation begin): diagnostics only."""

        def __init__(self) -> None:
            super().__init__()
            self.train_seconds = 0.0
            self._t0 = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._t0 = time.perf_counter()

        def on_test_begin(self, logs: dict | None = None) -> None:
            self.train_seconds += time.perf_counter() - self._t0

    def fer(epochs: int) -> tuple[float, float, float]:
        tp = dataclasses.replace(train_params, epochs=epochs)
        start, cpu = time.perf_counter(), time.process_time()
        result = train_model(model_params, tp, train, Split(val.x, val.y))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert result.epochs_run == epochs, result.epochs_run
        return elapsed, result.train_seconds, cpu

    def bare(epochs: int) -> tuple[float, float, float]:
        tp = dataclasses.replace(train_params, epochs=epochs)
        keras.utils.set_random_seed(tp.seed)
        start, cpu = time.perf_counter(), time.process_time()
        model = build_model(model_params, tp)
        compile_model(model, tp, math.ceil(len(train) / tp.batch_size))
        phases = _PhaseTimer()
        history = model.fit(x_train, y_train, batch_size=tp.batch_size, epochs=epochs, shuffle=True, verbose=0,
                            validation_data=(x_val, y_val), class_weight=weights, callbacks=[phases])
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert len(history.history["val_loss"]) == epochs
        return elapsed, phases.train_seconds, cpu

    t0 = time.perf_counter()
    fer(args.warmup_epochs)
    bare(args.warmup_epochs)
    print(f"warm-up (one of each, not counted): {time.perf_counter() - t0:.1f} s")

    images = len(train) * args.epochs
    rows: list[tuple[float, float]] = []
    cpu_ratios: list[float] = []
    print(f"\n{'round':>5} {'fer s':>8} {'bare s':>8} {'fer img/s':>10} {'bare img/s':>11} {'fer/bare':>9}"
          f"  | training phase s: {'fer':>6} {'bare':>6} | CPU s: {'fer':>6} {'bare':>6} {'bare/fer':>8}")
    for r in range(1, args.rounds + 1):
        f_s, f_train, f_cpu = fer(args.epochs)
        b_s, b_train, b_cpu = bare(args.epochs)
        f_ips, b_ips = images / f_s, images / b_s
        rows.append((f_ips, b_ips))
        cpu_ratios.append(b_cpu / f_cpu)
        print(f"{r:>5} {f_s:8.2f} {b_s:8.2f} {f_ips:10.1f} {b_ips:11.1f} {f_ips / b_ips:9.3f}"
              f"  |                   {f_train:6.2f} {b_train:6.2f} |        {f_cpu:6.1f} {b_cpu:6.1f} "
              f"{b_cpu / f_cpu:8.3f}", flush=True)
    f_med = _common.median([f for f, _ in rows])
    b_med = _common.median([b for _, b in rows])
    ratio = f_med / b_med
    ok = ratio >= TARGET_RATIO
    print(f"\nmedian images/s: fer-exp train_model {f_med:.1f}, bare model.fit {b_med:.1f}")
    print(f"fer / bare (medians): {ratio:.3f}  target >= {TARGET_RATIO}  {'ok' if ok else 'MISSED'}")
    print(f"per-round ratios: {', '.join(f'{f / b:.3f}' for f, b in rows)} (median "
          f"{_common.median([f / b for f, b in rows]):.3f})")
    print(f"CPU-time cross-check (process CPU seconds, less sensitive to other work on the cores): bare/fer median "
          f"{_common.median(cpu_ratios):.3f} (the same as fer/bare in images per CPU-second)")
    print("training phase = epoch begin -> its validation pass, summed over epochs (diagnostic: the rest of each "
          "call is build/compile, validation and callbacks)")
    print("note: train_model's seed_everything turns on TensorFlow op determinism for the whole process; every bare "
          "fit runs after the first train_model, so both sides run with it")
    print(f"images/s = {len(train):,} train rows x {args.epochs} epochs / wall time of the whole call "
          f"(validation passes included: {len(val):,} PublicTest rows per epoch on both sides)")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
