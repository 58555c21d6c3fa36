"""A searched study refuses to be searched on or finalized with a retrained teacher under another path."""

from __future__ import annotations

from distill.finalize import main as finalize_main
from ledger.records import WORLD, read_finalized
from search.run import main as search_main
from tests.distill.conftest import study_toml
from tests.ledger.test_world_identity import perturbed_copy


def test_search_and_finalize_refuse_a_changed_teacher(searched, world, tmp_path, capsys):
    before = searched.load()
    recorded, trials = dict(before.user_attrs[WORLD]), len(before.trials)
    changed = perturbed_copy(world.teacher, tmp_path / "retrained")
    toml = study_toml(tmp_path, world)
    toml.write_text(toml.read_text().replace(str(world.teacher), str(changed)))

    assert search_main(["--study", str(toml), "--storage", searched.url, "--trials", "8"]) == 2
    assert "was searched with another teacher (its weights)" in capsys.readouterr().err
    assert finalize_main(["--study", str(toml), "--storage", searched.url, "--trial", "best"]) == 2
    assert "was searched with another teacher (its weights)" in capsys.readouterr().err

    study = searched.load()
    assert len(study.trials) == trials and not read_finalized(study)
    assert study.user_attrs[WORLD] == recorded
