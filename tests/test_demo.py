"""demo.py shrunk, and the cold start's exercises and pages."""
import json
import random
import re

import pytest

import demo
from minisearcher import curriculum
from minisearcher.curriculum import Phase
from minisearcher.plot import read_metrics
from minisearcher.toyworld import make_world


def test_exercises_copy_and_compare_and_pages_keep_every_token_in_order():
    rng = random.Random(0)
    exercises = [curriculum.copy_exercise(rng) for _ in range(50)]
    for text in exercises:
        first, second = text.strip().rstrip(".").split(". ")
        assert first == second and 3 <= len(first.split(", ")) <= 6
    for text in (curriculum.compare_exercise(rng) for _ in range(50)):  # "A was born in Y. B ... So A was born first."
        pattern = r" (.+) was (born|founded) in (\d+)\. (.+) was \2 in (\d+)\. So (.+) was \2 first\.\n"
        a, _, year_a, b, year_b, first = re.fullmatch(pattern, text).groups()
        assert first == (a if int(year_a) < int(year_b) else b) and year_a != year_b
    world = make_world(0, n_people=12, n_cities=6, n_companies=6, n_works=6)
    tokenizer = curriculum.world_tokenizer([p["text"] for p in world.passages])
    ids = [t for text in exercises for t in tokenizer(text).input_ids]
    pages = curriculum.pages(tokenizer, exercises, length=32)
    assert len(pages) == len(ids) // 32  # only the last, partial page is left out
    assert [t for p in pages for t in p.prompt_ids + p.ids] == ids[:len(pages) * 32]
    assert all(len(p.prompt_ids) == 1 and p.loss_mask == [1] * 31 for p in pages)


def test_shrunken_demo_learns_to_search(tmp_path, monkeypatch):
    """`python demo.py` shrunk to two minutes: small worlds, a short cold start, a few RL steps. Stage 1
    rewards searching in the right format, so its mean reward must rise from the first steps to the last."""
    monkeypatch.setattr(demo, "WORLD", dict(n_people=60, n_cities=30, n_companies=30, n_works=40))
    monkeypatch.setattr(curriculum, "COLD_START", [Phase("copy", 100, 0, 0, 64, 32), Phase("read", 50, 16, 128, 16, 32),
                                                   Phase("sft", None, 8, None, 16, 32)])
    monkeypatch.setattr(demo, "EVAL_QUESTIONS", 40)
    # the demo's 8 questions per step: with 4, at the demo's learning rate, the reward's noise hid its rise
    args = ["--out", str(tmp_path), "--sft-steps", "150", "--stage1-steps", "8", "--steps", "2"]

    def cut_short(folder, log, *rest):  # the cold start is interrupted after writing a line of its log
        with open(log, "w") as f:
            f.write(json.dumps({"phase": "copy", "step": 0, "loss": 6.0}) + "\n")
        raise KeyboardInterrupt
    monkeypatch.setattr(demo, "cold_start", cut_short)
    with pytest.raises(KeyboardInterrupt):
        demo.main(args)
    monkeypatch.setattr(demo, "cold_start", curriculum.cold_start)
    with pytest.raises(SystemExit, match="already holds a run"):
        demo.main(args)
    with pytest.raises(SystemExit, match="other options"):
        demo.main(args[:-1] + ["3", "--resume"])
    demo.main(args + ["--resume"])  # the cold start runs again from its start, then the rest
    stage1 = [r["reward_mean"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["stage"] == 1]
    assert len(stage1) == 8 and sum(stage1[-3:]) / 3 > sum(stage1[:3]) / 3
    with open(tmp_path / "summary.json") as f:
        summary = json.load(f)
    assert list(summary) == ["no_search", "sft", "stage1", "stage2"]
    assert all(m["n"] == 40 for m in summary.values()) and summary["no_search"]["searches_mean"] == 0
    assert (tmp_path / "training.png").stat().st_size > 10_000
