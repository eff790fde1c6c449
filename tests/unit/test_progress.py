"""``search.progress.Progress``: counts, best so far, the '?' total, and TTY redraws vs plain lines."""

from __future__ import annotations

import io

from fer_experiments.search.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_counts_and_best_follow_trial_ends() -> None:
    out = io.StringIO()
    p = Progress(5, out)
    p.trial_end(0, "COMPLETE", 0.31)
    p.trial_end(1, "PRUNED", 0.9)  # a pruned trial's value is its last report: never the best
    p.trial_end(2, "FAIL", None, "loss became nan")
    p.trial_end(3, "COMPLETE", 0.42)
    p.trial_end(4, "COMPLETE", 0.40)
    assert p.counts == {"complete": 3, "pruned": 1, "failed": 1}
    assert p.finished == 4  # COMPLETE + PRUNED; a failed trial does not finish
    assert (p.best, p.best_trial) == (0.42, 3)
    assert p.status() == "best 0.4200 (trial 3) | complete 3 pruned 1 failed 1"
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert lines[0].startswith("trial 0 COMPLETE value 0.3100 [1/5 finished, ")
    assert lines[1].startswith("trial 1 PRUNED value 0.9000 [2/5 finished, ")
    assert lines[2].startswith("trial 2 FAIL - loss became nan [2/5 finished, ")  # no value for a failed trial
    assert lines[-1].endswith("| best 0.4200 (trial 3) | complete 3 pruned 1 failed 1")


def test_no_best_yet_and_unknown_state() -> None:
    p = Progress(2, io.StringIO())
    assert p.status() == "best - | complete 0 pruned 0 failed 0"
    p.trial_end(0, "RUNNING", None)
    assert p.counts == {"complete": 0, "pruned": 0, "failed": 0} and p.finished == 0 and p.best is None


def test_seed_resumes_counts_and_best() -> None:
    out = io.StringIO()
    p = Progress(10, out)
    p.seed(finished=4, complete=3, pruned=1, failed=2, best=0.5, best_trial=1)
    p.epoch(6, 1, 2, {"val_accuracy": 0.25}, "val_accuracy")
    assert out.getvalue() == ("trial 6 (5/10) epoch 1/2: val_accuracy 0.2500 | best 0.5000 (trial 1) | "
                              "complete 3 pruned 1 failed 2\n")
    p.trial_end(6, "COMPLETE", 0.45)  # not better than the resumed best
    assert (p.best, p.best_trial, p.finished) == (0.5, 1, 5)
    assert "[5/10 finished" in out.getvalue().splitlines()[-1]


def test_total_is_question_mark_without_a_trial_count() -> None:
    assert Progress(7).total == "7"
    for n in (0, 10**6, 10**9):
        assert Progress(n).total == "?"
    out = io.StringIO()
    p = Progress(10**9, out)
    p.epoch(0, 1, 3, {"val_macro_f1": 0.125}, "val_macro_f1")
    p.trial_end(0, "COMPLETE", 0.2)
    first, second = out.getvalue().splitlines()
    assert first.startswith("trial 0 (1/?) epoch 1/3: val_macro_f1 0.1250")
    assert "[1/? finished" in second


def test_tty_redraws_the_epoch_line_in_place() -> None:
    out = _Tty()
    p = Progress(3, out)
    assert p.tty
    p.epoch(0, 1, 2, {"val_accuracy": 0.2}, "val_accuracy")
    p.epoch(0, 2, 2, {"val_accuracy": 0.3}, "val_accuracy")
    p.note("reconciled trial 4")
    p.trial_end(0, "COMPLETE", 0.3)
    text = out.getvalue()
    # Epoch lines clear the line and carry no newline (each overwrites the last); notes and trial ends clear it too
    # and end the line.
    assert text.startswith("\r\x1b[2Ktrial 0 (1/3) epoch 1/2: val_accuracy 0.2000")
    assert "\r\x1b[2Ktrial 0 (1/3) epoch 2/2: val_accuracy 0.3000" in text
    assert text.count("\n") == 2
    assert "\r\x1b[2Knote: reconciled trial 4\n" in text
    assert text.split("\n")[1].startswith("\r\x1b[2Ktrial 0 COMPLETE value 0.3000 [1/3 finished")


def test_plain_stream_gets_one_line_per_event() -> None:
    out = io.StringIO()
    p = Progress(3, out)
    assert not p.tty
    p.epoch(1, 1, 2, {"val_accuracy": 0.2}, "val_accuracy")
    p.epoch(1, 2, 2, {"val_accuracy": 0.3}, "val_accuracy")
    p.note("something")
    assert out.getvalue().splitlines() == [
        "trial 1 (1/3) epoch 1/2: val_accuracy 0.2000 | best - | complete 0 pruned 0 failed 0",
        "trial 1 (1/3) epoch 2/2: val_accuracy 0.3000 | best - | complete 0 pruned 0 failed 0",
        "note: something"]
