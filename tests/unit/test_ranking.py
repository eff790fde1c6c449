"""Which trial a refit continues when trials are equal time slices (``search.ranking``): the pure rule on the curves
of the 60-minute run that lost to its own start point, and ``search.run.refit_ranking`` reading those curves back from
a real MLflow store (no training)."""

from __future__ import annotations

import pytest

from fer_experiments.search.ranking import SliceCurve, out_of_the_running, passes_from_history, refit_order
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
                              "0.4907) but not at equal images (0.3810 by 43,429 images); trial 0 (the best known "
                              "configuration) is refit")


def test_a_network_that_leads_at_equal_time_and_at_equal_images_is_refit() -> None:
    better = _curve(1, [(28_709, 0.4950), (57_418, 0.5010), (97_455, 0.5300)], "mini-xception")
    ranking = refit_order([WIDE, better, SAMPLED], ["mini-xception-wide", "mini-xception"])
    assert [t.number for t in ranking.order] == [1, 0, 2]
    assert ranking.reason is None


def test_a_lead_made_only_on_more_images_is_no_evidence() -> None:
    # The 20-minute run of 2026-12-07 (docs/results.md): 75 s slices; the wide net saw 16,064 images, the narrow one
    # made its first pass at 28,709 and led there. Its refit (the rule then took a pass past the incumbent's images)
    # ended below the baseline. Now no pass by 16,064 images: the wide net is refit.
    wide = _curve(0, [(16_064, 0.4135)], "mini-xception-wide")
    narrow = _curve(1, [(28_709, 0.4221), (31_333, 0.4230)], "mini-xception")
    ranking = refit_order([wide, narrow], ["mini-xception-wide", "mini-xception"])
    assert [t.number for t in ranking.order] == [0, 1]
    assert ranking.reason is not None and "but not at equal images (no pass by 16,064 images)" in ranking.reason
    assert out_of_the_running(narrow.passes[:1], wide)


def test_a_slower_network_that_leads_at_equal_time_has_won_on_fewer_images() -> None:
    slow = _curve(3, [(30_000, 0.5000)])
    assert WIDE.images == 43_429 and slow.best_within(WIDE.images) == 0.5000
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
    assert a.best_within(150) == 0.5 and NARROW.best_within(10**9) == 0.5127 and NARROW.best_within(20_000) == float("-inf")


def test_a_challenger_is_out_of_the_running_once_it_passed_the_incumbents_images_without_beating_it() -> None:
    # The narrow net of that run: its epoch-2 pass (57,418 images) is past the wide net's 43,429 and not above its
    # 0.4907, so it can no longer lead at equal images: the rest of its slice would be lost to the refit.
    assert not out_of_the_running([], WIDE)
    assert not out_of_the_running(NARROW.passes[:1], WIDE)  # 28,709 images: not there yet
    assert out_of_the_running(NARROW.passes[:2], WIDE)
    # A network that beat the incumbent by then stays in: it may still lead at both. A lead made on more images is
    # no evidence.
    assert not out_of_the_running([(28_709, 0.4908), (57_418, 0.30)], WIDE)
    assert out_of_the_running([(28_709, 0.45), (57_418, 0.4908)], WIDE)
    # Equal is not above (as in refit_order), and a pass before the incumbent's images counts as well.
    assert out_of_the_running([(28_709, 0.4907), (57_418, 0.30)], WIDE)
    assert not out_of_the_running([(28_709, 0.4950), (57_418, 0.30)], WIDE)
    # A slower network that never reaches the incumbent's images is judged at the end of its slice (refit_order).
    assert not out_of_the_running([(20_000, 0.10), (40_000, 0.20)], WIDE)


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

    uri = prepared_stores["tracking_uri"]
    _log_curves(uri, (WIDE, NARROW, SAMPLED))
    ranked, reason = refit_ranking(uri, "s", "optuna", _space())
    assert [r.number for r in ranked] == [0, 1, 2]
    assert reason is not None and "(0.3810 by 43,429 images)" in reason
    # Spaces without equal time slices (or without start points) rank by value alone, as before.
    ranked, reason = refit_ranking(uri, "s", "optuna", _space(trial_budget=None))
    assert [r.number for r in ranked] == [1, 0, 2] and reason is None
    assert [r.number for r in refit_ranking(uri, "s", "optuna", _space(start_from=[]))[0]] == [1, 0, 2]


def _log_curves(uri: str, curves: tuple[SliceCurve, ...]) -> None:
    from fer_experiments.tracking import start_run, tags

    for curve in curves:
        run_tags = tags.trial_tags(study="s", engine="optuna", number=curve.number) | {
            tags.TRIAL_STATE: "COMPLETE", tags.OBJECTIVE_VALUE: curve.value} | (
            {tags.START_FROM: curve.start_from} if curve.start_from else {})
        with start_run(uri, "s", run_name=f"trial-{curve.number}", tags=run_tags) as run:
            run.log_params({tags.PARAM_N_TRAIN: N_TRAIN})
            for epoch, (_, value) in enumerate(curve.passes, start=1):
                run.log_metrics({"val_accuracy": value}, step=epoch)
            run.log_metrics({tags.TRAIN_IMAGES_SEEN: curve.passes[-1][0]})


def test_refit_guard_stops_a_challenger_that_no_refit_can_take(prepared_stores: dict[str, str]) -> None:
    from fer_experiments.search.run import refit_guard
    from fer_experiments.search.trial import OutOfTheRunning

    uri, plan = prepared_stores["tracking_uri"], {"top_k": 1, "warm_start": True}
    # Before the incumbent has a COMPLETE trial there is nothing to be out of the running of.
    assert refit_guard(uri, "s", "optuna", _space(), plan, "mini-xception", N_TRAIN) == []
    _log_curves(uri, (WIDE,))
    [guard] = refit_guard(uri, "s", "optuna", _space(), plan, "mini-xception", N_TRAIN)
    guard(1, {"val_accuracy": 0.3810})  # 28,709 images: below the wide net's 43,429, goes on
    with pytest.raises(OutOfTheRunning) as stopped:
        guard(2, {"val_accuracy": 0.4391})
    assert stopped.value.value == 0.4391
    assert str(stopped.value) == ("out of the running at epoch 2 (57,418 images): its best val_accuracy by 43,429 "
                                  "images, 0.3810, is not above trial 0's 0.4907 (start point mini-xception-wide), "
                                  "so no refit can take it")
    # A sampled configuration is a challenger too; the incumbent itself, a refit of two trials (the second may be a
    # demoted one) and a space ranked by value alone get no guard.
    assert len(refit_guard(uri, "s", "optuna", _space(), plan, None, N_TRAIN)) == 1
    assert refit_guard(uri, "s", "optuna", _space(), plan, "mini-xception-wide", N_TRAIN) == []
    assert refit_guard(uri, "s", "optuna", _space(), {"top_k": 2}, "mini-xception", N_TRAIN) == []
    assert refit_guard(uri, "s", "optuna", _space(trial_budget=None), plan, "mini-xception", N_TRAIN) == []
    assert refit_guard(uri, "s", "optuna", _space(), None, "mini-xception", N_TRAIN) == []


@pytest.mark.parametrize("value", [0.4907, 0.49])
def test_an_equal_or_lower_value_never_displaces_the_incumbent(value: float) -> None:
    other = _curve(5, [(200_000, value)])
    assert refit_order([other, WIDE], ["mini-xception-wide"]).order[0].number == 0
