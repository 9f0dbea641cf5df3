"""Evaluation: the paper's metrics by hand, and the three modes on a real (tiny) Qwen2 with the real tokenizer;
eval.py's files and errors."""
import importlib.util
import json
import os
import random
import sys

import pytest

import eval as eval_cli  # the project's eval.py (the name shadows Python's built-in eval)
from minisearcher import evaluation
from minisearcher.data import write_jsonl
from minisearcher.model import load_policy
from minisearcher.prompts import (ANSWER, END_ANSWER, END_THINK, PLAIN_INSTRUCTION, build_baseline_prompt, build_prompt,
                                  documents_block)
from minisearcher.retriever import BM25
from minisearcher.rewards import cover_em, exact_match, f1_score
from minisearcher.rollout import RolloutConfig
from minisearcher.sft import sft_trace, trace_episode
from minisearcher.toyworld import make_world

CONFIG = RolloutConfig(max_searches=4, top_k=2, doc_tokens=40)


@pytest.mark.parametrize("prediction, golds, em, f1, cover", [
    ("The Home Rule League.", ["Home Rule League"], 1, 1, 1),  # articles and punctuation are normalised away
    ("Paul Thomas Mann", ["Thomas Mann"], 0, 0.8, 1),  # Cover-EM: every gold word is in the prediction
    ("Mann", ["Thomas Mann"], 0, 2 / 3, 0),  # F1 gives partial credit, Cover-EM none
    ("new york", ["NYC", "New York City", "New York"], 1, 1, 1),  # a list of golds: the best one counts
    ("yes, it is", ["yes"], 0, 0, 1),  # yes/no is all or nothing for F1, as in HotpotQA's scorer
    ("no", ["yes"], 0, 0, 0),
])
def test_metrics(prediction, golds, em, f1, cover):
    assert exact_match(prediction, golds) == em
    assert f1_score(prediction, golds) == pytest.approx(f1)
    assert cover_em(prediction, golds) == cover


def test_prediction_is_the_tagged_answer_else_the_last_line():
    assert evaluation.predict(f"I know it. {END_THINK}\n\n{ANSWER} Paris {END_ANSWER}") == "Paris"
    assert evaluation.predict("\n\nLet me think.\nThe answer is: Paris.") == "The answer is: Paris."
    assert evaluation.predict(f"\n{ANSWER}\nParis") == "Paris"  # no </answer>: the tags are dropped
    assert evaluation.predict("") == ""


@pytest.fixture(scope="module")
def toy():
    world = make_world(0, n_people=12, n_cities=6, n_companies=6, n_works=6)
    return world, BM25(world.passages)


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    model, tokenizer = load_policy(tiny_qwen_dir, dtype="float32", trainable=False)
    return model, tokenizer


def test_evaluate_scores_what_the_model_wrote(tiny, toy, monkeypatch):
    """Two hand-written episodes in the exact protocol, with real BM25 documents: one searches twice and answers
    right, one guesses without tags. The rollout is replaced, so that only the scoring is under test."""
    (model, tokenizer), (world, retriever) = tiny, toy
    question = next(q for q in world.questions if q["type"] == "bridge")
    docs = lambda query: documents_block(retriever.search([query], 2)[0], tokenizer, 40)
    found = trace_episode(tokenizer, "", sft_trace(question, "full", docs, random.Random(0)))
    found.queries = [step["query"] for step in question["steps"]]
    guessed = trace_episode(tokenizer, "", [(f" I think it is {question['decoys'][0]}.", True)])
    monkeypatch.setattr(evaluation, "rollout", lambda *args: [found, guessed])
    metrics, records = evaluation.evaluate(model, tokenizer, retriever, [question, question], "search", CONFIG,
                                           chat=True)
    assert [r["prediction"] for r in records] == [question["answers"][0], f"I think it is {question['decoys'][0]}."]
    assert records[0]["tokens"] == sum(found.loss_mask) < len(found.ids)  # the documents are not counted
    assert metrics == {"n": 2, "em": 0.5, "f1": 0.5, "cover_em": 0.5, "answered": 0.5, "format_ok": 0.5,
                       "found": 0.5, "searches_mean": 1.0, "tokens_mean": (sum(found.loss_mask) + len(guessed.ids)) / 2}


def test_found_reads_the_injected_documents_only():
    """found: a gold answer as whole words in the system's documents; not in the model's own text, not inside
    another word, never a yes/no gold."""
    segments = [("I look it up. <|begin_of_query|> Paris <|end_of_query|>", True),
                ("<|begin_of_documents|>\n(1) Paris is, no doubt, the capital of France. ...\n<|end_of_documents|>",
                 False), ("Paris it is, not Lyon. <answer> Paris </answer>", True)]
    assert evaluation.found(segments, ["the capital"]) and evaluation.found(segments, ["Lyon", "FRANCE!"])
    assert not evaluation.found(segments, ["Lyon"])  # only the model wrote it
    assert not evaluation.found(segments, ["Pari"]) and not evaluation.found(segments, ["no"])


def run(tiny, toy, mode, monkeypatch):
    """evaluate() with the tiny Qwen on two toy questions, one per batch, recording each rollout's config."""
    (model, tokenizer), (world, retriever) = tiny, toy
    rows = world.questions[:2]
    calls, real = [], evaluation.rollout
    monkeypatch.setattr(evaluation, "rollout", lambda *args: calls.append(args[-1]) or real(*args))
    cfg = RolloutConfig(max_searches=4, top_k=2, doc_tokens=40, max_turn_tokens=8, max_episode_tokens=200)
    metrics, records = evaluation.evaluate(model, tokenizer, retriever, rows, mode, cfg, chat=True, batch_size=1)
    assert len(calls) == 2 and all(c.temperature == 0 for c in calls)  # greedy, one rollout per batch
    assert metrics["n"] == len(records) == 2 and [r["question"] for r in records] == [r["question"] for r in rows]
    assert all(r["tokens"] == 8 for r in records)  # a random model runs to the turn limit
    return records, calls, rows


def test_search_mode_uses_the_search_protocol(tiny, toy, monkeypatch):
    records, calls, rows = run(tiny, toy, "search", monkeypatch)
    assert calls[0].max_searches == 4
    assert records[0]["prompt"] == build_prompt(tiny[1], rows[0]["question"], chat=True)
    assert records == run(tiny, toy, "search", monkeypatch)[0]  # greedy: the same episodes again


def test_naive_mode_has_no_search_and_no_documents(tiny, toy, monkeypatch):
    records, calls, rows = run(tiny, toy, "naive", monkeypatch)
    assert calls[0].max_searches == 0
    assert records[0]["prompt"] == build_baseline_prompt(tiny[1], rows[0]["question"], chat=True)
    assert "<|begin_of_query|>" not in records[0]["prompt"] and "<|begin_of_documents|>" not in records[0]["prompt"]


def test_rag_prompt_holds_the_retrieved_passages(tiny, toy, monkeypatch):
    records, calls, rows = run(tiny, toy, "rag", monkeypatch)
    assert calls[0].max_searches == 0
    for r in records:
        block = documents_block(toy[1].search([r["question"]], 2)[0], tiny[1], 40).strip()
        assert block in r["prompt"] and r["prompt"].index(block) < r["prompt"].index(r["question"])


def test_plain_modes_ask_for_a_short_phrase_and_take_the_first_line(tiny, toy, monkeypatch):
    (model, tokenizer), (world, retriever) = tiny, toy
    real = evaluation.rollout
    for mode, passages in [("naive-plain", ""), ("rag-plain", "(1) ")]:
        calls = []
        monkeypatch.setattr(evaluation, "rollout", lambda *args: calls.append(args[-1]) or real(*args))
        metrics, records = evaluation.evaluate(model, tokenizer, retriever, world.questions[:2], mode, CONFIG,
                                               chat=True)
        assert calls[0].max_searches == 0 and calls[0].max_episode_tokens == evaluation.PLAIN_TOKENS == 24
        prompt = records[0]["prompt"]
        assert prompt.startswith("<|im_start|>user\n" + passages) and prompt.endswith("Answer:<|im_end|>\n"
                                                                                      "<|im_start|>assistant\n")
        assert "<think>" not in prompt and PLAIN_INSTRUCTION in prompt and all(r["tokens"] <= 24 for r in records)
        text = "".join(t for t, by_model in records[0]["segments"] if by_model)
        assert records[0]["prediction"] == next((line.strip() for line in text.splitlines() if line.strip()), "")
    assert "(2) " in prompt and "(3) " not in prompt  # rag-plain: the question's top_k passages


@pytest.fixture
def files(tmp_path):
    world = make_world(0, n_people=12, n_cities=6, n_companies=6, n_works=6)
    write_jsonl(world.passages, tmp_path / "corpus.jsonl")
    write_jsonl([{"question": q["question"], "answer": [*q["answers"], "x"]} for q in world.questions[:3]],
                tmp_path / "toy.jsonl")
    return tmp_path


def test_cli_writes_metrics_and_predictions(tiny_qwen_dir, files):
    out = files / "out" / "search.json"
    eval_cli.main(["--model", tiny_qwen_dir, "--data", str(files / "toy.jsonl"), "--mode", "search",
                     "--corpus", str(files / "corpus.jsonl"), "--limit", "2", "--batch-size", "2",
                     "--max-episode-tokens", "12", "--dtype", "float32", "--json", str(out)])
    metrics = json.loads(out.read_text())
    assert list(metrics) == ["toy"] and metrics["toy"]["n"] == 2
    assert set(eval_cli.COLUMNS) < set(metrics["toy"])
    records = [json.loads(line) for line in (files / "out" / "search.toy.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[0]["golds"][1] == "x"
    assert {"question", "golds", "prediction", "em", "f1", "cover_em", "queries", "segments"} <= set(records[0])


@pytest.mark.parametrize("fix, message", [
    (lambda f: (f / "toy.jsonl").write_text('{"question": "Q?", "answer": "A"}\n{"answer": "A"}\n'), r"toy.jsonl:2"),
    (lambda f: (f / "toy.jsonl").write_text('{"question": "Q?", "answer": []}\n'), r"toy.jsonl:1: 'answer'"),
    (lambda f: (f / "toy.jsonl").unlink(), r"toy.jsonl: no such file"),
    (lambda f: (f / "corpus.jsonl").write_text('{"title": "T"}\n'), r"corpus.jsonl:1: missing 'text'"),
])
def test_bad_input_is_named_before_the_model_loads(files, fix, message):
    fix(files)  # the model does not exist either: the data are checked first
    with pytest.raises(SystemExit, match=message):
        eval_cli.main(["--model", str(files / "no-model"), "--data", str(files / "toy.jsonl"),
                         "--corpus", str(files / "corpus.jsonl"), "--mode", "rag"])


def test_naive_modes_need_no_corpus(tiny_qwen_dir, files):
    metrics = eval_cli.main(["--model", tiny_qwen_dir, "--data", str(files / "toy.jsonl"), "--mode", "naive-plain",
                             "--limit", "2", "--dtype", "float32"])
    assert metrics["toy"]["n"] == 2 and metrics["toy"]["searches_mean"] == 0


def test_missing_model_says_how_to_pass_a_local_one(files):
    with pytest.raises(SystemExit, match="local folder"):
        eval_cli.main(["--model", str(files / "no-model"), "--data", str(files / "toy.jsonl"),
                         "--corpus", str(files / "corpus.jsonl"), "--mode", "naive"])


@pytest.mark.parametrize("option", [["--limit", "0"], ["--batch-size", "0"], ["--max-searches", "-1"]])
def test_bad_option_is_refused(option, capsys):
    with pytest.raises(SystemExit):
        eval_cli.parse_args(["--data", "q.jsonl", "--corpus", "c.jsonl", "--mode", "rag", *option])
    assert "must be" in capsys.readouterr().err


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (the folder is not a package; its scripts import each other as siblings)."""
    folder = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    path = os.path.join(folder, f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_bootstrap_interval():
    paired = load_benchmark("paired")
    assert paired.paired_bootstrap([1.0] * 50, [1.0] * 50) == (0.0, 0.0, 0.0)
    diff, low, high = paired.paired_bootstrap([0.0] * 100, [1.0] * 30 + [0.0] * 70)  # 30 questions better, 0 worse
    assert diff == pytest.approx(0.3) and 0.2 < low < 0.3 < high < 0.4  # +-1.96 sqrt(0.3 * 0.7 / 100) = +-0.09


def test_comparisons_count_answers_naming_both_candidates():
    comparisons = load_benchmark("comparisons")
    film = "Which film was released earlier, Drive, He Said or Ocean Of Pearls?"
    born = "Who was born first out of Paul L. Friedman and Abdelghani Mouaoui?"
    assert comparisons.candidates(film, ["Drive, He Said"]) == ("Drive, He Said", "Ocean Of Pearls")
    assert comparisons.candidates(born, ["Paul L. Friedman"]) == ("Paul L. Friedman", "Abdelghani Mouaoui")
    assert comparisons.candidates("Who is the father of Emperor Taizong Of Song?", ["Zhao Hongyin"]) is None
    rows = [{"question": film, "golds": ["Drive, He Said"], "prediction": p} for p in
            ["Drive, He Said", "Drive, He Said came out before Ocean of Pearls.", "Ocean Of Pearls"]]
    rows.append({"question": born, "golds": ["Paul L. Friedman"], "prediction": "Abdelghani Mouaoui"})
    rows.append({"question": "Who is the father of Emperor Taizong Of Song?", "golds": ["Zhao Hongyin"],
                 "prediction": "Zhao Hongyin, not Zhao Kuangyin"})
    rows.append({"question": "Who is David Miliband's mother?", "golds": ["Marion Kozak"], "prediction": "Ed Miliband",
                 "found": True})
    for row in rows:
        row["cover_em"] = cover_em(row["prediction"], row["golds"])
        row.setdefault("found", False)
    assert comparisons.count(rows) == {"comparisons": 4, "their hits": 2.0, "hits naming both": 1, "others": 2,
                                       "others' hits": 1.0, "others' answer found": 1, "Cover-EM": 3.0}


def test_a_bridging_query_names_what_the_question_does_not():
    bridges = load_benchmark("queries").bridges
    question = "Where was the director of film Revenge Of The Ninja born?"
    first = ("Revenge of the Ninja director", "(1) Revenge of the Ninja is a 1983 film directed by Sam Firstenberg.")
    assert bridges(question, [first, ("Sam Firstenberg birthplace", "(1) Sam Firstenberg was born in Poland.")])
    assert not bridges(question, [first, ("director of Revenge Of The Ninja birthplace", "")])
    assert not bridges(question, [first, ("Birthplace of the director", "")])  # a word never read
    assert not bridges(question, [("Sam Firstenberg", "(1) Sam Firstenberg was born in Poland."), first])  # unread
