"""Per-step seeds let worker processes draw the teacher's batches: the same batches, and so the same
weights, whatever the number of workers, also after a resume; the shared stream refuses workers."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

import vlm.demo.teacher as teacher_module
from tests.vlm.demo.tiny_recipe import TINY as TINY_RECIPE
from vlm.demo.step_batches import SharedStreamError, StepBatches, iterate
from vlm.demo.teacher import train_teacher
from vlm.demo.train_teacher import main as train_teacher_main

TINY = dataclasses.replace(TINY_RECIPE, step_seeds=True)


def _draws(rng: random.Random, step: int) -> torch.Tensor:
    return torch.tensor([step] + [rng.random() for _ in range(3)], dtype=torch.float64)


def test_workers_draw_the_same_batches_in_step_order():
    batches = StepBatches(_draws, random.Random(0), "test")
    here = list(iterate(batches, 0, 6, workers=0))
    in_workers = list(iterate(batches, 0, 6, workers=2))
    assert [int(b[0]) for b in in_workers] == list(range(6))
    assert all(torch.equal(a, b) for a, b in zip(here, in_workers))
    # A resumed stage starting at step 3 gets exactly the batches it would have had.
    assert all(torch.equal(a, b) for a, b in zip(here[3:], iterate(batches, 3, 6, workers=2)))
    # Different steps draw different scenes.
    assert not torch.equal(here[1][1:], here[2][1:])


def test_the_shared_stream_is_drawn_in_order_and_refuses_workers():
    batches = StepBatches(_draws, random.Random(0), None)
    first, second = iterate(batches, 0, 2)
    expected = random.Random(0)
    assert first[1:].tolist() == [expected.random() for _ in range(3)]
    assert second[1:].tolist() == [expected.random() for _ in range(3)]
    with pytest.raises(SharedStreamError, match="per-step seeds"):
        list(iterate(batches, 0, 2, workers=1))


def _weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def drawn_here():
    model, _ = train_teacher(TINY)
    return _weights(model)


def test_the_teacher_trains_to_the_same_weights_with_workers(drawn_here, monkeypatch):
    import vlm.demo.step_batches as step_batches_module
    import vlm.demo.vision_pretrain as vision_module

    workers_seen = []
    original = step_batches_module.iterate

    def spy(batches, first, stop, workers=0):
        workers_seen.append(workers)
        return original(batches, first, stop, workers)

    monkeypatch.setattr(teacher_module, "iterate", spy)
    monkeypatch.setattr(vision_module, "iterate", spy)
    model, _ = train_teacher(TINY, data_workers=2)
    assert workers_seen == [2, 2, 2]  # vision, letter drill and VQA stages all drawn by the workers
    assert _same(_weights(model), drawn_here)
    # The per-step stream is another stream than the shipped teacher's shared one.
    shared, _ = train_teacher(dataclasses.replace(TINY, step_seeds=False))
    assert not _same(_weights(shared), drawn_here)


@pytest.mark.parametrize(
    ("owner", "name", "call"),
    [
        ("vision", "loss", 2),  # vision pre-training's 2nd step
        ("teacher", "sequence_loss", 2 + 3),  # letter drill: 2 calls, then the 3rd VQA step
    ],
    ids=["vision", "vqa"],
)
def test_a_stopped_run_with_workers_resumes_to_the_same_weights(
    tmp_path, monkeypatch, drawn_here, owner, name, call
):
    from vlm.demo.vision_pretrain import PatchHeads

    target = PatchHeads if owner == "vision" else teacher_module
    original = getattr(target, name)
    calls = {"n": 0}

    def stop(*args, **kwargs):  # runs in the training process: the workers only draw batches
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(target, name, stop)
        with pytest.raises(KeyboardInterrupt):
            train_teacher(TINY, work_dir=tmp_path, checkpoint_every=1, data_workers=2)
    model, _ = train_teacher(TINY, work_dir=tmp_path, checkpoint_every=1, data_workers=2)
    assert _same(_weights(model), drawn_here)


def test_the_shared_stream_draws_what_the_sessions_drew_before():
    """The default stream is the shipped teacher's: batch after batch from one generator, the kind
    curriculum in its first steps, exactly as plain `vqa_session` calls draw them."""
    from functools import partial

    from vlm.demo.sessions import vqa_session
    from vlm.demo.teacher import build_demo_tokenizer, demo_vlm_config, vqa_batch
    from vlm.model import VisionLanguageModel
    from vlm.supervised import collate_sequences
    from vlm.tokenizer import special_token_ids

    config = dataclasses.replace(TINY, step_seeds=False)
    tokenizer = build_demo_tokenizer()
    cfg = demo_vlm_config(len(tokenizer))
    spec = VisionLanguageModel(cfg, special_token_ids(tokenizer, cfg)["image_token"]).image_spec
    make = partial(vqa_batch, tokenizer=tokenizer, cfg=cfg, spec=spec, config=config)
    drawn = list(iterate(StepBatches(make, random.Random(5), None), 0, 4))
    rng = random.Random(5)
    for step, batch in enumerate(drawn):
        kinds = config.first_kinds if step < config.first_steps else ()
        mix = dataclasses.replace(config.session, kinds=kinds)
        sessions = [vqa_session(rng, tokenizer, cfg, spec, mix) for _ in range(config.batch_size)]
        expected = collate_sequences(sessions, tokenizer.pad_token_id)
        assert torch.equal(batch["input_ids"], expected["input_ids"])
        assert torch.equal(batch["images"], expected["images"])


def test_the_cli_asks_for_step_seeds_before_workers(capsys):
    assert train_teacher_main(["--data-workers", "2"]) == 2
    assert "--step-seeds" in capsys.readouterr().err
    assert train_teacher_main(["--data-workers", "-1", "--step-seeds"]) == 2
    assert ">= 0" in capsys.readouterr().err
