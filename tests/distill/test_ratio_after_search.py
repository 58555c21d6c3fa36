"""One feasibility rule: after a search, editing the study TOML's constraint_ratio changes nothing silently.

`study.best_trials` (optuna, the dashboard), `distill.promote` and the report all read the constraint the
search recorded; the report shows another ratio only when asked (`--what-if-ratio`), labelled as such; and a
search resumed with the edited TOML refuses instead of judging new trials at another line.
"""

from __future__ import annotations

import logging

from distill.promote import main as promote_main
from ledger.config import load_study_config
from ledger.records import read_promoted, recorded_ratio
from ledger.rules import feasible_front, first_of_each_config, is_feasible, pareto_front
from reports.data import headline
from reports.page import load_report_data
from search.run import main as search_main


def _edit_ratio(toml, ratio: float) -> None:
    text = toml.read_text()
    assert "constraint_ratio" not in text
    toml.write_text(text.replace("[search]\n", f"[search]\nconstraint_ratio = {ratio}\n"))


def test_an_edited_ratio_changes_no_verdict_silently(searched, caplog):
    study = searched.load()
    searched_ratio = recorded_ratio(study)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    verdicts = {t.number: is_feasible(t) for t in complete}
    x = study.user_attrs["baseline"]["accuracy"]
    # A ratio at which the line moves past at least one trial: the edit would change verdicts if re-derived.
    new_ratio = next(
        r for r in (0.5, 0.7, 1.0) if any((t.values[1] >= r * x) != verdicts[t.number] for t in complete)
    )
    _edit_ratio(searched.toml, new_ratio)
    edited = load_study_config(str(searched.toml))
    assert edited.search.constraint_ratio == new_ratio != searched_ratio

    # optuna's own front (what optuna-dashboard draws) is the recorded feasible front.
    best = {t.number for t in study.best_trials}
    front = {t.number for t in feasible_front(study)}
    assert front and front <= best and all(verdicts[n] for n in best)

    # promote: the recorded line, and a warning that names both ratios.
    with caplog.at_level(logging.WARNING):
        assert promote_main(["--study", str(searched.toml), "--storage", searched.url]) == 0
    assert (
        f"searched with constraint_ratio = {searched_ratio}" in caplog.text and str(new_ratio) in caplog.text
    )
    promoted = read_promoted(searched.load())
    assert {r.trial for r in promoted if r.why == "pareto"} == front

    # the report: the search's verdicts by default ...
    data = load_report_data(edited, searched.url)
    assert data.facts.ratio == searched_ratio and not data.facts.what_if
    assert dict(zip(data.trials["number"], data.trials["feasible"])) == {
        t.number: verdicts.get(t.number, False) for t in study.trials
    }
    assert set(data.front["number"]) == front
    # ... and the edited ratio only as a labelled what-if.
    what_if = load_report_data(edited, searched.url, what_if_ratio=new_ratio)
    assert what_if.facts.what_if and "what-if" in headline(what_if).text
    moved = {t.number: t.values[1] >= new_ratio * x for t in complete}
    assert dict(zip(what_if.trials["number"], what_if.trials["feasible"])) == {
        t.number: moved.get(t.number, False) for t in study.trials
    }
    what_if_front = {
        t.number for t in pareto_front(first_of_each_config([t for t in complete if moved[t.number]]))
    }
    assert set(what_if.front["number"]) == what_if_front

    # a search resumed with the edited TOML refuses: new trials would be judged at another line.
    caplog.clear()
    assert search_main(["--study", str(searched.toml), "--storage", searched.url, "--trials", "20"]) == 2
    assert len(searched.load().trials) == len(study.trials)
