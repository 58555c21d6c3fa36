"""`vlm.bench`: the structure of its result, its FLOPs against `vlm.flops`, and the CLI on a random-weight
config and on the demo teacher. Tiny models, one or two timed passes; no assertion on a time's value."""

from __future__ import annotations

import json

import pytest

from tests.nanovlm_reference import tiny_nanovlm_config
from vlm.bench import main
from vlm.compression import compress
from vlm.config import BenchSettings, CompressionConfig, VLMConfig
from vlm.flops import count_question, decode_flops
from vlm.processing import Encoded
from vlm.timing import (
    COMPONENTS,
    benchmark,
    encode_questions,
    measure_memory,
    summarize,
    synthetic_example,
)

FAST = BenchSettings(warmup=1, repeats=2, batch_size=3, new_tokens=3)
STATS = {"median_s", "min_s", "max_s", "q1_s", "q3_s", "n", "samples_s"}


def _ordered(stats: dict) -> bool:
    return 0 < stats["min_s"] <= stats["q1_s"] <= stats["median_s"] <= stats["q3_s"] <= stats["max_s"]


def _text_tokens(model, encoded: Encoded) -> int:
    return int(encoded.input_ids.shape[0]) - int((encoded.input_ids == model.image_token_id).sum())


def test_summarize_orders_and_keeps_samples():
    stats = summarize([0.3, 0.1, 0.2, 0.5])
    assert stats["median_s"] == pytest.approx(0.25) and (stats["min_s"], stats["max_s"]) == (0.1, 0.5)
    assert stats["samples_s"] == [0.3, 0.1, 0.2, 0.5] and stats["n"] == 4
    assert summarize([0.4])["q1_s"] == summarize([0.4])["q3_s"] == 0.4


def test_settings_reject_bad_counts():
    with pytest.raises(ValueError, match="repeats"):
        BenchSettings(repeats=0)
    with pytest.raises(ValueError, match="batch_size"):
        BenchSettings(batch_size=-1)


def test_benchmark_result_structure(tiny_model, tiny_tokenizer, tiny_examples):
    prompts = encode_questions(tiny_model, tiny_tokenizer, tiny_examples[:2])
    result = benchmark(tiny_model, prompts, FAST, tiny_model.cfg)

    assert set(result["latency"]) == {"mcq", "direct_answer"}
    for stats in result["latency"].values():
        assert STATS <= stats.keys() and _ordered(stats)
        assert stats["n"] == FAST.repeats * 2  # every question, every repeat
    assert result["throughput"]["batch_size"] == 3
    assert result["throughput"]["questions_per_s"] == pytest.approx(
        3 / result["throughput"]["batch"]["median_s"]
    )
    assert list(result["components"]) == list(COMPONENTS)
    for entry in result["components"].values():
        assert _ordered(entry) and entry["flops"] > 0
        assert entry["flop_per_s"] == pytest.approx(entry["flops"] / entry["median_s"])
    vision = result["components"]["vision"]
    assert vision["views"] == pytest.approx((3 + 5) / 2)  # 64x32 -> 3 views, 50x70 -> 5 views
    assert vision["median_s_per_view"] == pytest.approx(vision["median_s"] / vision["views"])
    for name in ("mcq", "direct_answer", "throughput_batch"):
        memory = result["memory"][name]
        assert memory["peak_bytes"] >= memory["before_bytes"] > 0, memory
    env = result["environment"]
    assert {"device", "dtype", "threads", "torch", "transformers", "device_name"} <= env.keys()
    assert env["device"] == "cpu" and env["dtype"] == "float32"
    assert result["input"]["questions"] == 2 and result["input"]["prompt_ids"] == "tokenizer"
    json.dumps(result)  # the CLI writes it as JSON


def test_compressed_flops_and_components_match_vlm_flops(tiny_model, tiny_tokenizer, tiny_examples):
    compression = CompressionConfig(token_grid=2, max_grid_side=1, drop_decoder_layers=(1,))
    student = compress(tiny_model, compression)
    example = tiny_examples[0]
    prompts = encode_questions(student, tiny_tokenizer, [example])
    settings = BenchSettings(warmup=0, repeats=1, batch_size=0, new_tokens=4, memory=False)
    result = benchmark(student, prompts, settings, tiny_model.cfg, compression)

    question = prompts.questions[0]
    mcq = count_question(
        tiny_model.cfg, compression, example.image.size, _text_tokens(student, question.mcq), 1, False
    )
    da = count_question(
        tiny_model.cfg, compression, example.image.size, _text_tokens(student, question.da), 4, False
    )
    assert result["flops"]["mcq"] == pytest.approx(mcq["analytic"])
    assert result["flops"]["direct_answer"] == pytest.approx(da["analytic"])
    assert mcq["views"] == 1 and result["input"]["image_tokens"] == 4  # global view alone, 2x2 tokens
    components = result["components"]
    assert list(components) == ["vision", "connector", "prefill", "decode_step"]
    for name in ("vision", "connector", "prefill"):
        assert components[name]["flops"] == mcq["analytic"][name]
    step = decode_flops(student.cfg, mcq["prompt_tokens"], 2)  # one step: the second answer token
    assert components["decode_step"]["flops"] == step
    assert "throughput" not in result and result["memory"] == {}


def test_memory_sees_an_allocation():
    import torch

    held = []
    memory = measure_memory(lambda: held.append(torch.ones(64 << 20, dtype=torch.uint8)), torch.device("cpu"))
    assert memory["rise_bytes"] >= 60 << 20, memory  # the 64 MiB tensor was resident during the call


def test_cli_random_config_offline(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_nanovlm_config()))
    out = tmp_path / "bench.json"
    args = ["--model", str(config), "--threads", "1", "--warmup", "0", "--repeats", "1", "--batch-size", "2"]
    assert main([*args, "--new-tokens", "2", "--compression", '{"token_grid": 2}', "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["summary"] in capsys.readouterr().out
    assert result["compression"]["token_grid"] == 2
    assert result["input"]["prompt_ids"].startswith("word tokenizer")
    assert result["input"]["image_sizes"] == ["640x480"]
    # 640x480 in the tiny config (32 px views, long side 64, short side 48 rounded up to 64): 2x2 crops
    # + global = 5 views of 2x2 tokens.
    assert (result["input"]["views"], result["input"]["image_tokens"]) == (5, 20)
    example = synthetic_example()
    # The word tokenizer sets the text's length; the image part is exact.
    expected = count_question(
        VLMConfig.from_json(config),
        CompressionConfig(token_grid=2),
        example.image.size,
        result["flops"]["mcq"]["prompt_tokens"] - 20,
        1,
        False,
    )
    assert result["flops"]["mcq"]["total"] == expected["analytic"]["total"]
    assert result["environment"]["threads"] == 1


def test_cli_demo_teacher(tmp_path, capsys):
    out = tmp_path / "demo.json"
    args = ["--model", "demo", "--warmup", "0", "--repeats", "1", "--batch-size", "0", "--new-tokens", "2"]
    assert main([*args, "--no-components", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["input"]["image_sizes"] == ["128x64"] and result["input"]["prompt_ids"] == "tokenizer"
    assert result["flops"]["mcq"]["n_views"] == 3  # 2 crops + the global view
    assert "components" not in result and "throughput" not in result
    assert capsys.readouterr().out.startswith("demo: MCQ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compression", '{"token_grid": 0}'], "token_grid must be >= 1"),
        (["--compression", '{"tokens": 4}'], "unknown CompressionConfig fields"),
        (["--device", "cuda"], "no CUDA GPU"),
        (["--repeats", "0"], "repeats"),
        (["--questions", "0"], "--questions"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, capsys):
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
