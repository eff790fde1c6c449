"""The search lifecycle's timing hook (``SearchOutcome.timings``, ``tracked_trial(on_phase=...)``) without training:
what ``bench/search_overhead.py`` reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fer_experiments.search.lifecycle import TIMED_PHASES, SearchOutcome
from fer_experiments.search.trial import tracked_trial
from fer_experiments.tracking import get_run, tags
from tests.conftest import synthetic_split, write_kaggle_csv


def test_add_time_sums_known_phases_and_refuses_others() -> None:
    out = SearchOutcome(study="s", engine="optuna")
    assert out.timings == {}
    out.add_time("training", 1.5)
    out.add_time("training", 0.5)
    out.add_time("summary", 0.25)
    assert out.timings == {"training": 2.0, "summary": 0.25}
    with pytest.raises(ValueError, match="unknown phase 'fit'"):
        out.add_time("fit", 1.0)
    assert set(TIMED_PHASES) == {"setup", "trial_setup", "training", "tracking", "summary", "registration"}


def test_trial_failing_before_training_reports_its_phases(prepared_stores: dict[str, str], tmp_path: Path) -> None:
    from fer_experiments.config import DataConfig
    from fer_experiments.data import load_training_data

    rng = np.random.default_rng(0)
    csv = write_kaggle_csv(tmp_path / "tiny.csv", {n: synthetic_split(14, rng)
                                                   for n in ("Training", "PublicTest", "PrivateTest")})
    data = load_training_data(DataConfig(path=str(csv)))
    seen: list[tuple[str, float]] = []
    uri = prepared_stores["tracking_uri"]
    done = tracked_trial(tracking_uri=uri, experiment="t", parent_run_id=None, number=0,  # type: ignore[arg-type]
                         tags=tags.trial_tags(study="t", engine="optuna", number=0), data=data,
                         values={"conv_blocks": 99}, epochs=1, objective="val_accuracy", extra_params={},
                         on_phase=lambda phase, s: seen.append((phase, s)))
    assert done.state == "FAIL" and "conv_blocks" in (done.failure or "")
    assert [p for p, _ in seen] == ["trial_setup", "training", "tracking"]
    assert all(s >= 0 for _, s in seen)
    assert dict(seen)["training"] == 0.0  # it never reached an epoch
    assert get_run(uri, done.run_id).status == "FAILED"
