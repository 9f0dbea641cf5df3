"""train.py end to end on a tiny local model: the files it writes, --resume, and the errors for bad input."""
import json
import os

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

import train
from minisearcher.plot import read_metrics
from conftest import shared_file

FAST = ["--questions-per-step", "2", "--group-size", "2", "--max-turn-tokens", "16", "--max-episode-tokens", "32",
        "--dtype", "float32", "--top-k", "2", "--doc-tokens", "32"]


def run(tiny_qwen_dir, out, *extra):
    train.main(["--model", tiny_qwen_dir, "--train-data", shared_file("r1-searcher", "stage_1.jsonl"),
                "--corpus", shared_file("wiki-mini.jsonl"), "--out", str(out), *FAST, *extra])


def test_both_stages_write_metrics_and_adapters(tiny_qwen_dir, tmp_path):
    run(tiny_qwen_dir, tmp_path, "--stage", "both", "--steps", "2")
    rows = read_metrics(tmp_path / "metrics.jsonl")
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
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]
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
