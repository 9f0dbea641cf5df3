"""train.py end to end on a tiny local model: the files it writes, --resume, and the errors for bad input."""
import json
import os
import random
import re
import socket
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import train
from minisearcher import grpo
from minisearcher.data import write_jsonl
from minisearcher.plot import read_metrics
from minisearcher.prompts import documents_block
from minisearcher.retriever import BM25
from minisearcher.sft import sft_trace
from minisearcher.toyworld import make_world
from conftest import shared_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


@pytest.fixture(scope="module")
def toy_files(tiny_qwen_dir, tmp_path_factory):
    """A small toy world as the files train.py reads: questions, corpus and cold-start traces."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("toy")
    world = make_world(0, n_people=12, n_cities=6, n_companies=6, n_works=6)
    retriever, tokenizer = BM25(world.passages), AutoTokenizer.from_pretrained(tiny_qwen_dir)
    docs = lambda query: documents_block(retriever.search([query], 2)[0], tokenizer, 32)
    traces = [{"question": q["question"], "segments": sft_trace(q, "full", docs, random.Random(0))}
              for q in world.questions[:8]]
    for name, rows in [("questions", world.questions), ("corpus", world.passages), ("traces", traces)]:
        write_jsonl(rows, folder / f"{name}.jsonl")
    return folder


def run_toy(tiny_qwen_dir, toy_files, out, *extra):
    train.main(["--model", tiny_qwen_dir, "--train-data", str(toy_files / "questions.jsonl"), "--corpus",
                str(toy_files / "corpus.jsonl"), "--sft-data", str(toy_files / "traces.jsonl"), "--out", str(out),
                *FAST, "--sft-steps", "2", "--steps", "2", "--save-every", "1", "--beta", "0.04", "--lr", "1e-2",
                "--reference", "start", *extra])


def timeless_metrics(out) -> list[dict]:
    """The run's metrics without their timings, which differ from run to run."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(out / "metrics.jsonl")]


def outcome(out) -> tuple[dict, list[dict]]:
    """The stage-2 adapter's tensors and the metrics without their timings."""
    return load_file(out / "stage2" / "adapter_model.safetensors"), timeless_metrics(out)


def test_a_run_resumed_anywhere_is_the_uninterrupted_run(tiny_qwen_dir, toy_files, tmp_path, monkeypatch):
    """Cut after each checkpoint (inside a phase and at both phase boundaries), then --resume: bit for bit the same
    adapters and metrics as the run that was never cut."""
    run_toy(tiny_qwen_dir, toy_files, tmp_path / "whole")
    tensors, rows = outcome(tmp_path / "whole")
    assert [(r["stage"], r["step"]) for r in rows] == [("sft", 0), ("sft", 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    real_save, cuts = train.save_checkpoint, []
    for n in range(1, 6):
        saves = []

        def save_then_stop(args, model, optimizer, phase, step):
            real_save(args, model, optimizer, phase, step)
            saves.append((phase, step))
            if len(saves) == n:
                raise KeyboardInterrupt
        monkeypatch.setattr(train, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run_toy(tiny_qwen_dir, toy_files, tmp_path / str(n))
        cuts.append(saves[-1])
        monkeypatch.setattr(train, "save_checkpoint", real_save)
        run_toy(tiny_qwen_dir, toy_files, tmp_path / str(n), "--resume")
        resumed_tensors, resumed_rows = outcome(tmp_path / str(n))
        assert resumed_rows == rows
        assert resumed_tensors.keys() == tensors.keys()
        assert all(torch.equal(resumed_tensors[k], tensors[k]) for k in tensors)
    assert cuts == [("sft", 1), ("1", 0), ("1", 1), ("2", 0), ("2", 1)]


def test_resume_refuses_other_options_and_restarts_a_run_cut_before_its_first_checkpoint(tiny_qwen_dir, toy_files,
                                                                                         tmp_path, monkeypatch):
    def stop(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "sft_phase_step", stop)
    with pytest.raises(KeyboardInterrupt):
        run_toy(tiny_qwen_dir, toy_files, tmp_path, "--stage", "1")
    monkeypatch.undo()
    with pytest.raises(SystemExit, match="already holds a run"):  # never silently mixed with a new run
        run_toy(tiny_qwen_dir, toy_files, tmp_path, "--stage", "1")
    with pytest.raises(SystemExit, match=r"--lr was 0.01 in .*config.json, now 0.001"):
        run_toy(tiny_qwen_dir, toy_files, tmp_path, "--stage", "1", "--resume", "--lr", "1e-3")
    run_toy(tiny_qwen_dir, toy_files, tmp_path, "--stage", "1", "--resume", "--save-every", "5")  # harmless
    assert [(r["stage"], r["step"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == \
        [("sft", 0), ("sft", 1), (1, 0), (1, 1)]
    with pytest.raises(SystemExit, match="has finished"):
        run_toy(tiny_qwen_dir, toy_files, tmp_path, "--stage", "1", "--resume")


def test_the_same_command_twice_gives_the_same_run(tiny_qwen_dir, toy_files, tmp_path):
    """Two processes, one command: the same adapters, bit for bit (each process seeds its generators afresh)."""
    for name in ("a", "b"):
        subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--model", tiny_qwen_dir, "--train-data",
                        str(toy_files / "questions.jsonl"), "--corpus", str(toy_files / "corpus.jsonl"),
                        "--sft-data", str(toy_files / "traces.jsonl"), "--sft-steps", "2", "--out",
                        str(tmp_path / name), *FAST, "--steps", "2", "--lr", "1e-2"],
                       check=True, capture_output=True)
    a, b = (load_file(tmp_path / name / "stage2" / "adapter_model.safetensors") for name in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if "lora_B" in k)  # it did train


def test_one_command_with_a_stage1_temperature_is_two_commands_of_a_stage_each(tiny_qwen_dir, toy_files, tmp_path):
    """--stage1-temperature samples stage 1 at its own temperature, so a recipe can hold in one command what was
    run as two: stage 1 at one temperature, then stage 2 at another from the stage-1 adapter (--adapter)."""
    run_toy(tiny_qwen_dir, toy_files, tmp_path / "one", "--stage1-temperature", "0.5", "--temperature", "2")
    run_toy(tiny_qwen_dir, toy_files, tmp_path / "first", "--stage", "1", "--temperature", "0.5")
    run_toy(tiny_qwen_dir, toy_files, tmp_path / "second", "--stage", "2", "--sft-steps", "0", "--adapter",
            str(tmp_path / "first" / "stage1"), "--temperature", "2")
    (one, one_rows), (second, second_rows) = outcome(tmp_path / "one"), outcome(tmp_path / "second")
    assert one_rows == timeless_metrics(tmp_path / "first") + second_rows
    # Bit for bit: stage 1 sampled at --temperature instead draws other episodes, and the adapter differs.
    assert one.keys() == second.keys() and all(torch.equal(one[k], second[k]) for k in one)


def test_a_diverging_run_skips_its_updates_and_stops(tiny_qwen_dir, toy_files, tmp_path, monkeypatch):
    """A non-finite loss skips the update (logged in metrics.jsonl); three in a row stop the run with a clear error,
    and the last good checkpoint stays."""
    real_rollout = grpo.rollout

    def broken_rollout(*args):
        episodes = real_rollout(*args)
        episodes[0].logprobs[0] = float("nan")
        return episodes
    monkeypatch.setattr(grpo, "rollout", broken_rollout)
    with pytest.raises(RuntimeError, match="stage 1 steps 0-2: the loss or the gradient was not finite 3 steps in a "
                                           "row .* the last good checkpoint is"):
        run_toy(tiny_qwen_dir, toy_files, tmp_path, "--stage", "1", "--sft-steps", "0", "--stage1-steps", "5")
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["skipped"]) for r in rows] == [(0, 1), (1, 1), (2, 1)]
    assert json.load(open(tmp_path / "checkpoint" / "state.json")) == {"phase": "1", "step": 2}
    weights = load_file(tmp_path / "checkpoint" / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() and (("lora_B" not in k) or not w.any()) for k, w in weights.items())


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


def test_a_recipe_holds_the_options_and_the_command_line_wins(tmp_path, capsys):
    args = train.parse_args(["--config", os.path.join(ROOT, "recipes", "smollm2-real.yaml")])
    assert args.train_data == ["data/r1-searcher/hotpotqa_500.jsonl[100:]", "data/r1-searcher/2wiki_500.jsonl[100:]"]
    assert (args.top_k, args.doc_tokens, args.sft_lr, args.stage, args.beta) == (3, 64, 4e-4, "both", 0.0)
    assert (args.sft_steps, args.stage1_temperature, args.temperature) == (80, 1.0, 0.7)
    args = train.parse_args(["--config", os.path.join(ROOT, "recipes", "smollm2-real.yaml"), "--top-k", "5",
                             "--model", "Qwen/Qwen2.5-0.5B-Instruct"])
    assert (args.top_k, args.model) == (5, "Qwen/Qwen2.5-0.5B-Instruct")
    recipe = tmp_path / "recipe.yaml"
    for text, message in [("lr: 1e-5\nlearning_rate: 1\n", r"'learning_rate' is not an option"),
                          ("top_k: three\n", r"top_k: invalid int value"),
                          ("stage: 3\n", r"stage must be one of 1, 2, both, none"),
                          ("train_data: one.jsonl\n", r"train_data takes a list"),
                          ("dr_grpo: 1\n", r"dr_grpo takes true or false")]:
        recipe.write_text(text)
        with pytest.raises(SystemExit):
            train.parse_args(["--config", str(recipe)])
        assert re.search(f"--config {recipe}: {message}", capsys.readouterr().err)


def test_two_processes_make_the_update_of_one(tiny_qwen_dir, toy_files, tmp_path):
    """torchrun, 2 processes (gloo): each takes half of every step's traces and questions, the gradients are summed
    over the tokens of both, so the adapters equal those of one process (within float rounding).

    Sampled at temperature 0.01: the random model's logits are nearly uniform, so at temperature 1 a sample flips with
    the last bit of a logit, which the sums over another partition round differently; episodes that differ would make
    updates that differ. Sharpened 100 times, the samples are those of the model, not of its rounding."""
    options = ["--model", tiny_qwen_dir, "--train-data", str(toy_files / "questions.jsonl"), "--corpus",
               str(toy_files / "corpus.jsonl"), "--sft-data", str(toy_files / "traces.jsonl"), "--sft-steps", "1",
               "--sft-batch", "4", *FAST, "--stage", "1", "--stage1-steps", "2", "--temperature", "0.01",
               "--beta", "0.04", "--lr", "1e-2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *options, "--out", str(tmp_path / "one")],
                   check=True, capture_output=True, env=env)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
                    os.path.join(ROOT, "train.py"), *options, "--out", str(tmp_path / "two")],
                   check=True, capture_output=True, env=env)
    one, two = (load_file(tmp_path / name / "stage1" / "adapter_model.safetensors") for name in ("one", "two"))
    assert one.keys() == two.keys()
    # Sums over other partitions of the tokens round differently, and Adam divides a gradient by its own size, so a
    # gradient near 0 moves its weight by a rounding-dependent amount: a few weights differ by up to ~1e-3, most by
    # ~1e-6, where a step moves a weight by up to lr (1e-2); without the all-reduce 5e-2.
    assert all(torch.allclose(one[k], two[k], rtol=0, atol=2e-3) for k in one)
    moved = load_file(tmp_path / "one" / "sft" / "adapter_model.safetensors")
    assert any(not torch.allclose(one[k], moved[k]) for k in one)  # stage 1 did change the adapter
    rows = [read_metrics(tmp_path / name / "metrics.jsonl") for name in ("one", "two")]
    assert [(r["stage"], r["step"], r["tokens"]) for r in rows[0]] == [(r["stage"], r["step"], r["tokens"])
                                                                       for r in rows[1]]
    assert all(a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6) for a, b in zip(*rows)
               for key in ("loss", "reward_mean", "searches_mean", "kl") if key in a)


def test_metrics_go_to_tensorboard_as_well(tiny_qwen_dir, toy_files, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_toy(tiny_qwen_dir, toy_files, tmp_path, "--report-to", "tensorboard")
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    stage2 = [r["reward_mean"] for r in rows if r["stage"] == 2]
    assert [e.value for e in events.Scalars("stage2/reward_mean")] == pytest.approx(stage2)
    assert [e.step for e in events.Scalars("sft/loss")] == [0, 1]
