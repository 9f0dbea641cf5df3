"""train.py end to end on a tiny local model: the files it writes, --resume, and the errors for bad input."""
import json
import os
import re

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

import train
from conftest import shared_file

FAST = ["--questions-per-step", "2", "--group-size", "2", "--max-turn-tokens", "16", "--max-episode-tokens", "32",
        "--dtype", "float32", "--top-k", "2", "--doc-tokens", "32"]


def run(tiny_qwen_dir, out, *extra):
    train.main(["--model", tiny_qwen_dir, "--train-data", shared_file("r1-searcher", "stage_1.jsonl"),
                "--corpus", shared_file("wiki-mini.jsonl"), "--out", str(out), *FAST, *extra])


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_both_stages_write_metrics_and_adapters(tiny_qwen_dir, tmp_path):
    run(tiny_qwen_dir, tmp_path, "--stage", "both", "--steps", "2")
    rows = read_metrics(tmp_path)
    assert [(r["stage"], r["step"]) for r in rows] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    keys = {"stage", "step", "reward_mean", "reward_std", "searches_mean", "format_ok", "f1_mean", "loss", "kl",
            "tokens", "seconds"}
    assert all(keys <= r.keys() for r in rows) and all(r["tokens"] > 0 for r in rows)
    for stage in ("stage1", "stage2"):
        base = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir)
        PeftModel.from_pretrained(base, os.path.join(tmp_path, stage))  # standard peft format
    assert not os.path.exists(tmp_path / "checkpoint")  # a finished run leaves no checkpoint behind


def test_resume_continues_an_interrupted_run(tiny_qwen_dir, tmp_path, monkeypatch):
    real_step = train.grpo_step

    def crash_at_step_2(args, *rest):
        if rest[-2] == 2:  # the step argument
            raise KeyboardInterrupt
        return real_step(args, *rest)

    monkeypatch.setattr(train, "grpo_step", crash_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_qwen_dir, tmp_path, "--stage", "1", "--steps", "4", "--save-every", "1")
    assert json.load(open(tmp_path / "checkpoint" / "state.json")) == {"phase": "1", "step": 2}
    with pytest.raises(SystemExit, match="already holds a run"):  # never silently mixed with a new run
        run(tiny_qwen_dir, tmp_path, "--stage", "1", "--steps", "4")
    monkeypatch.setattr(train, "grpo_step", real_step)
    run(tiny_qwen_dir, tmp_path, "--stage", "1", "--steps", "4", "--resume")
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]
    assert os.path.exists(tmp_path / "stage1" / "adapter_model.safetensors")


def test_bad_input_stops_before_training(tiny_qwen_dir, tmp_path, capsys):
    def error(*argv):
        with pytest.raises(SystemExit) as e:
            train.main(list(argv))
        return str(e.value.code) + capsys.readouterr().err

    corpus = shared_file("wiki-mini.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a?", "answer": "b"}\n{"answer": "c"}\n')
    assert f"{bad}:2: missing 'question'" in error("--model", "nowhere/none", "--train-data", str(bad),
                                                   "--corpus", corpus)
    assert "no such file" in error("--model", tiny_qwen_dir, "--train-data", "missing.jsonl", "--corpus", corpus)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    good = shared_file("r1-searcher", "stage_1.jsonl")
    assert f"{empty}: the file is empty" in error("--model", tiny_qwen_dir, "--train-data", good, "--corpus",
                                                   str(empty))
    assert "invalid choice: '3'" in error("--train-data", good, "--corpus", corpus, "--stage", "3")
    assert "--group-size must be at least 2" in error("--train-data", good, "--corpus", corpus, "--group-size", "1")
    message = error("--model", str(tmp_path / "no-model"), "--train-data", good, "--corpus", corpus,
                    "--out", str(tmp_path / "out"))
    assert "cannot load it" in message and "local folder" in message


def test_exercises_copy_and_compare_and_pages_keep_every_token_in_order():
    import random

    from minisearcher import toyworld
    rng = random.Random(0)
    exercises = [toyworld.copy_exercise(rng) for _ in range(50)]
    for text in exercises:
        first, second = text.strip().rstrip(".").split(". ")
        assert first == second and 3 <= len(first.split(", ")) <= 6
    for text in (toyworld.compare_exercise(rng) for _ in range(50)):  # "A was born in Y. B ... So A was born first."
        pattern = r" (.+) was (born|founded) in (\d+)\. (.+) was \2 in (\d+)\. So (.+) was \2 first\.\n"
        a, _, year_a, b, year_b, first = re.fullmatch(pattern, text).groups()
        assert first == (a if int(year_a) < int(year_b) else b) and year_a != year_b
    world = toyworld.make_world(0, n_people=12, n_cities=6, n_companies=6, n_works=6)
    tokenizer = toyworld.world_tokenizer([p["text"] for p in world.passages])
    ids = [t for text in exercises for t in tokenizer(text).input_ids]
    pages = train.pages(tokenizer, exercises, length=32)
    assert len(pages) == len(ids) // 32  # only the last, partial page is left out
    assert [t for p in pages for t in p.prompt_ids + p.ids] == ids[:len(pages) * 32]
    assert all(len(p.prompt_ids) == 1 and p.loss_mask == [1] * 31 for p in pages)


def test_shrunken_demo_learns_to_search(tmp_path, monkeypatch):
    """`train.py --preset demo` shrunk to two minutes: small worlds, a short cold start, a few RL steps. Stage 1
    rewards searching in the right format, so its mean reward must rise from the first steps to the last."""
    monkeypatch.setattr(train, "DEMO_WORLD", dict(n_people=60, n_cities=30, n_companies=30, n_works=40))
    monkeypatch.setattr(train, "COLD_START", [("copy", 100, (0, 0), (64, 32)), ("read", 50, (16, 128), (16, 32)),
                                              ("sft", None, (8, None), (16, 32))])
    monkeypatch.setattr(train, "DEMO_EVAL_QUESTIONS", 40)
    # the demo's 8 questions per step: with 4, at the demo's learning rate, the reward's noise hid its rise
    train.main(["--preset", "demo", "--out", str(tmp_path), "--sft-steps", "150", "--stage1-steps", "8",
                "--steps", "2"])
    stage1 = [r["reward_mean"] for r in read_metrics(tmp_path) if r["stage"] == 1]
    assert len(stage1) == 8 and sum(stage1[-3:]) / 3 > sum(stage1[:3]) / 3
    with open(tmp_path / "summary.json") as f:
        summary = json.load(f)
    assert list(summary) == ["no_search", "sft", "stage1", "stage2"]
    assert all(m["n"] == 40 for m in summary.values()) and summary["no_search"]["searches_mean"] == 0
    assert (tmp_path / "training.png").stat().st_size > 10_000
