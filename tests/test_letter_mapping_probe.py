"""The letter-mapping probe builds the task it claims to and trains on it."""

from __future__ import annotations

import math
import random

from benchmarks.letter_mapping_probe import (
    BOS,
    DOT,
    END,
    N_LETTERS,
    NO,
    ProbeSetting,
    choice_word_positions,
    flag_targets,
    make_batch,
    run_probe,
)


def test_batch_rows_encode_target_then_lettered_choices_then_filler():
    ids, targets = make_batch(random.Random(0), batch_size=16, filler=5)
    assert ids.shape == (16, 2 + 3 * N_LETTERS + 5 + 1)
    for row, answer in zip(ids.tolist(), targets.tolist()):
        assert row[0] == BOS and row[-1] == END
        choices = row[2 : 2 + 3 * N_LETTERS]
        assert choices[0::3] == list(range(N_LETTERS))  # letters A..D in order
        assert set(choices[1::3]) == {DOT}
        words = choices[2::3]
        assert len(set(words)) == N_LETTERS
        assert words.index(row[1]) == answer  # the target is the answer's word


def test_probe_runs_and_reports_its_curve():
    result = run_probe(ProbeSetting(width=32, lr=1e-3, filler=2, layers=1, heads=2), 6, 8, log_every=3)
    assert [step for step, _ in result["curve"]] == [3, 6]
    assert math.isfinite(result["final_loss"])
    assert result["solved_at_step"] is None or 1 <= result["solved_at_step"] <= 6


def test_choice_flags_point_at_the_target_word_with_its_letter():
    ids, targets = make_batch(random.Random(1), batch_size=8, filler=0)
    flags = flag_targets(ids, targets)
    for row, answer, row_flags in zip(ids.tolist(), targets.tolist(), flags.tolist()):
        words = [row[i] for i in choice_word_positions()]
        assert words[answer] == row[1]  # the flagged position holds the target word
        assert row_flags == [answer if k == answer else NO for k in range(N_LETTERS)]


def test_probe_with_choice_flags_runs():
    setting = ProbeSetting(width=32, lr=1e-3, filler=2, layers=1, heads=2, choice_flags=True)
    result = run_probe(setting, 4, 8, log_every=2)
    assert result["choice_flags"] is True and math.isfinite(result["final_loss"])
