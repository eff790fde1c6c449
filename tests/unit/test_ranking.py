"""Which trial a refit continues when trials are equal time slices (``search.ranking``): the pure rule on the curves
of the 60-minute run that lost to its own start point, and ``search.run.refit_ranking`` reading those curves back from
a real MLflow store (no training)."""

from __future__ import annotations

import pytest

from fer_experiments.search.ranking import SliceCurve, passes_from_history, refit_order
from fer_experiments.spaces import SearchSpace

N_TRAIN = 28_709


def _curve(number: int, passes: list[tuple[int, float]], start_from: str | None = None) -> SliceCurve:
    return SliceCurve(number, max(v for _, v in passes), tuple(passes), start_from)


# Shaped on the 60-minute run of 2026-12-07 (docs/results.md): three 216 s slices on all of Training. The wide start
# point saw 43,429 images, the narrow one (twice as fast) 97,455 and led at equal time, but trailed at equal images.
# The final values, the images and the narrow net's epoch-2 pass (0.4391) are that run's; the other passes are made up.
WIDE = _curve(0, [(28_709, 0.4302), (43_429, 0.4907)], "mini-xception-wide")
NARROW = _curve(1, [(28_709, 0.3810), (57_418, 0.4391), (86_127, 0.4921), (97_455, 0.5127)], "mini-xception")
SAMPLED = _curve(2, [(28_709, 0.3950), (54_309, 0.4361)])


def test_a_faster_network_that_only_leads_at_equal_time_goes_below_the_first_start_point() -> None:
    ranking = refit_order([WIDE, NARROW, SAMPLED], ["mini-xception-wide", "mini-xception"])
    assert [t.number for t in ranking.order] == [0, 1, 2]
    assert ranking.reason == ("trial 1 led trial 0 (start point mini-xception-wide) at equal time (0.5127 against "
                              "0.4907) but not at equal images (0.4391 by 43,429 images); trial 0 (the best known "
                              "configuration) is refit")


def test_a_network_that_leads_at_equal_time_and_at_equal_images_is_refit() -> None:
    better = _curve(1, [(28_709, 0.4500), (57_418, 0.5010), (97_455, 0.5300)], "mini-xception")
    ranking = refit_order([WIDE, better, SAMPLED], ["mini-xception-wide", "mini-xception"])
    assert [t.number for t in ranking.order] == [1, 0, 2]
    assert ranking.reason is None


def test_a_slower_network_that_leads_at_equal_time_has_won_on_fewer_images() -> None:
    slow = _curve(3, [(30_000, 0.5000)])
    assert WIDE.images == 43_429 and slow.best_until(WIDE.images) == 0.5000
    ranking = refit_order([WIDE, NARROW, slow], ["mini-xception-wide"])
    # The narrow net goes below the incumbent; the slow one stays above it.
    assert [t.number for t in ranking.order] == [3, 0, 1]
    assert ranking.reason is not None and ranking.reason.startswith("trial 1 led trial 0")
    assert ranking.reason.endswith("; trial 3 (it led at both) is refit")
    # When the best value is also the one that led at equal images, nothing at the top changed: no reason.
    ranking = refit_order([WIDE, NARROW, _curve(4, [(30_000, 0.6)])], ["mini-xception-wide"])
    assert [t.number for t in ranking.order] == [4, 0, 1] and ranking.reason is None


def test_without_a_start_point_trial_the_value_decides() -> None:
    assert [t.number for t in refit_order([WIDE, NARROW, SAMPLED], ["edge-net"]).order] == [1, 0, 2]
    # The second start point is the incumbent when the first has no COMPLETE trial.
    ranking = refit_order([NARROW, SAMPLED], ["mini-xception-wide", "mini-xception"])
    assert [t.number for t in ranking.order] == [1, 2] and ranking.reason is None


def test_ties_keep_the_earlier_trial_and_the_best_pass_is_the_first_that_reached_it() -> None:
    a, b = _curve(0, [(100, 0.5), (200, 0.5)], "x"), _curve(1, [(100, 0.5)])
    assert [t.number for t in refit_order([b, a], ["x"]).order] == [0, 1]
    assert a.images == 100
    assert a.best_until(150) == 0.5 and NARROW.best_until(10**9) == 0.5127


def test_passes_from_the_per_epoch_history_count_a_cut_last_epoch() -> None:
    # Step 0 (a continued training's starting point) is not a pass of this training's own.
    assert passes_from_history([(0, 0.2), (1, 0.4), (2, 0.45)], N_TRAIN, 43_429) == (
        (28_709, 0.4), (43_429, 0.45))


def _space(**extra: object) -> SearchSpace:
    return SearchSpace.from_dict({"name": "t", "max_epochs": 9, "trial_budget": "6%",
                                  "start_from": ["mini-xception-wide", "mini-xception"],
                                  "params": {"filters": {"type": "categorical", "choices": [16, 32]},
                                             "stem_filters": {"type": "categorical", "choices": [8, 16]},
                                             "block": "separable"}} | extra)


def test_refit_ranking_reads_the_curves_from_the_store(prepared_stores: dict[str, str]) -> None:
    from fer_experiments.search.run import refit_ranking
    from fer_experiments.tracking import start_run, tags

    uri = prepared_stores["tracking_uri"]
    for curve in (WIDE, NARROW, SAMPLED):
        run_tags = tags.trial_tags(study="s", engine="optuna", number=curve.number) | {
            tags.TRIAL_STATE: "COMPLETE", tags.OBJECTIVE_VALUE: curve.value} | (
            {tags.START_FROM: curve.start_from} if curve.start_from else {})
        with start_run(uri, "s", run_name=f"trial-{curve.number}", tags=run_tags) as run:
            run.log_params({tags.PARAM_N_TRAIN: N_TRAIN})
            for epoch, (_, value) in enumerate(curve.passes, start=1):
                run.log_metrics({"val_accuracy": value}, step=epoch)
            run.log_metrics({tags.TRAIN_IMAGES_SEEN: curve.passes[-1][0]})
    ranked, reason = refit_ranking(uri, "s", "optuna", _space())
    assert [r.number for r in ranked] == [0, 1, 2]
    assert reason is not None and "(0.4391 by 43,429 images)" in reason
    # Spaces without equal time slices (or without start points) rank by value alone, as before.
    ranked, reason = refit_ranking(uri, "s", "optuna", _space(trial_budget=None))
    assert [r.number for r in ranked] == [1, 0, 2] and reason is None
    assert [r.number for r in refit_ranking(uri, "s", "optuna", _space(start_from=[]))[0]] == [1, 0, 2]


@pytest.mark.parametrize("value", [0.4907, 0.49])
def test_an_equal_or_lower_value_never_displaces_the_incumbent(value: float) -> None:
    other = _curve(5, [(200_000, value)])
    assert refit_order([other, WIDE], ["mini-xception-wide"]).order[0].number == 0
