"""Which trial a refit continues, when trials are equal time slices: the best known network unless beaten twice.

A slice of a few minutes favours the network that learns fastest in its first minutes, not the one that ends best
after the refit's much longer training (short-horizon bias). Measured at 60 minutes on 2 cores: `mini-xception`,
twice as fast per image, led `mini-xception-wide` after a 216 s slice (0.513 against 0.491 PublicTest) on 2.2x the
images, trailed it at equal images (0.439), and its refit ended 3.3 points below the wide net trained for the hour.

So the study's first start point (the space's best known configuration: the *incumbent*) keeps its place above a
trial with a higher value unless that trial also leads it at equal data: its best PublicTest over the passes it made
by the time it had seen as many Training images as the incumbent had at its selected pass (a pass made later, on
more images, is no evidence: at 20 minutes the narrow net's first pass came at 28,709 images against the wide net's
16,064, led it there, and its refit lost). A faster network must win at equal time *and* at equal images; a slower
one that wins at equal time has already won on fewer images. The test
is conservative on purpose (a faster network's passes at equal images come mid-schedule, before its learning rate
decays): without evidence on both counts the search continues what is known to work, and never loses to it by
refitting a network that only starts faster. Pure functions: the tracking side builds the ``SliceCurve``s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class SliceCurve:
    """One COMPLETE trial as the ranking sees it."""

    number: int
    #: The objective at its selected (best) PublicTest pass.
    value: float
    #: ``(Training images seen, objective)`` at each of its PublicTest passes, in order.
    passes: tuple[tuple[int, float], ...]
    #: The ``start_from`` point it ran (None: the sampler's own configuration).
    start_from: str | None = None

    @property
    def images(self) -> int:
        """Training images seen at the selected pass (the first pass that reached its value)."""
        best = [n for n, v in self.passes if v >= self.value]
        return best[0] if best else (self.passes[-1][0] if self.passes else 0)

    def best_within(self, images: int) -> float:
        """``best_within(self.passes, images)``; its value when it has no passes at all."""
        return best_within(self.passes, images) if self.passes else self.value


def best_within(passes: Sequence[tuple[int, float]], images: int) -> float:
    """The best objective over the ``(images seen, objective)`` passes made by the time ``images`` Training images
    had been seen (-inf when the first pass came later: no evidence at that many images)."""
    return max((value for seen, value in passes if seen <= images), default=float("-inf"))


@dataclass(frozen=True)
class Ranking:
    """Trials in the order a refit takes them, and why the value order was overruled (None: it was not)."""

    order: tuple[SliceCurve, ...]
    reason: str | None = None


def passes_from_history(history: Sequence[tuple[int, float]], n_train: int, images_seen: int
                        ) -> tuple[tuple[int, float], ...]:
    """``(images, objective)`` per PublicTest pass from the per-epoch objective (step = epoch, 1-based) of a
    training on ``n_train`` rows that saw ``images_seen`` images in all (only its last epoch may be partial)."""
    return tuple((min(step * n_train, images_seen), value) for step, value in history if step >= 1)


def incumbent_of(trials: Sequence[SliceCurve], start_points: Sequence[str]) -> SliceCurve | None:
    """The trial of the first start point (in the space's order) that has a COMPLETE trial, or None."""
    for name in start_points:
        ran = [t for t in trials if t.start_from == name]
        if ran:
            return min(ran, key=lambda t: t.number)
    return None


def leads_at_equal_data(challenger: SliceCurve, incumbent: SliceCurve) -> bool:
    """True when ``challenger`` beats ``incumbent`` at equal time (its value) and at equal Training images."""
    return challenger.value > incumbent.value and challenger.best_within(incumbent.images) > incumbent.value


def out_of_the_running(passes: Sequence[tuple[int, float]], incumbent: SliceCurve) -> bool:
    """True once a challenger's PublicTest passes have gone past the incumbent's images with none made by then above
    its value: it can no longer lead at equal images, so with ``refit.top_k: 1`` no refit will take it, and the rest
    of its slice would be paid out of the refit's time (a faster network gets there mid-slice: at 60 minutes the
    narrow net passed the wide one's 45,669 images at 137 s of its 216)."""
    if not passes or passes[-1][0] < incumbent.images:
        return False
    return best_within(passes, incumbent.images) <= incumbent.value


def refit_order(trials: Sequence[SliceCurve], start_points: Sequence[str]) -> Ranking:
    """Trials by value (ties to the earlier trial), except that a trial ranked above the incumbent (the first start
    point's trial) which does not also lead it at equal images goes below it."""
    by_value = sorted(trials, key=lambda t: (-t.value, t.number))
    incumbent = incumbent_of(trials, start_points)
    if incumbent is None:
        return Ranking(tuple(by_value))
    above = [t for t in by_value if t.value > incumbent.value]
    kept = [t for t in above if leads_at_equal_data(t, incumbent)]
    demoted = [t for t in above if t not in kept]
    if not demoted:
        return Ranking(tuple(by_value))
    rest = [t for t in by_value if t.value <= incumbent.value and t is not incumbent]
    order = (*kept, incumbent, *sorted(demoted + rest, key=lambda t: (-t.value, t.number)))
    first = by_value[0]
    if first not in demoted:  # the best value also led at equal images: the rule changed nothing at the top
        return Ranking(order)
    chosen = order[0]
    reason = (f"trial {first.number} led trial {incumbent.number} (start point {incumbent.start_from}) at equal "
              f"time ({first.value:.4f} against {incumbent.value:.4f}) but not at equal images "
              f"({_shown(first.best_within(incumbent.images))} by {incumbent.images:,} images); trial {chosen.number}"
              + (" (the best known configuration)" if chosen is incumbent else " (it led at both)") + " is refit")
    return Ranking(order, reason)


def _shown(value: float) -> str:
    return f"{value:.4f}" if value != float("-inf") else "no pass"
