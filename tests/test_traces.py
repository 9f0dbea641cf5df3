"""Cold-start traces from R1-Searcher's own trajectories: converted on real rows with the real Qwen tokenizer and a
real BM25 over wiki-mini, and learnt from."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minisearcher.data import load_corpus, load_questions
from minisearcher.prompts import (BEGIN_DOCS, BEGIN_QUERY, EMPTY_QUERY, END_QUERY, build_prompt, documents_block,
                                  message_block)
from minisearcher.retriever import BM25
from minisearcher.rollout import RolloutConfig
from minisearcher.sft import load_traces, sft_step, trace_episode

from conftest import shared_file

CFG = RolloutConfig(max_searches=4, top_k=3, doc_tokens=64, max_turn_tokens=256, max_episode_tokens=1024)


@pytest.fixture(scope="module")
def wiki():
    return BM25(load_corpus(shared_file("wiki-mini.jsonl")))


@pytest.fixture(scope="module")
def rows():
    """Real trajectories of questions outside the evaluation split: two searching right ones, one judged wrong, one
    with a query whose documents block is missing (a broken protocol), and one of the evaluation split."""
    evaluation = {q["question"] for q in load_questions(shared_file("r1-searcher", "hotpotqa_500.jsonl") + "[:100]")}
    with open(shared_file("r1-searcher", "traces", "hotpotqa_qwen.jsonl")) as f:
        trajectories = [json.loads(line) for line in f]
    free = [r for r in trajectories if r["question"].strip() not in evaluation]
    right = [r for r in free if r["judged_correct"] and r["trajectory"].count(BEGIN_QUERY) == 2][:2]
    wrong = next(r for r in free if not r["judged_correct"])
    broken = dict(right[0], question="a broken one?")
    broken["trajectory"] = broken["trajectory"].replace(BEGIN_DOCS, "<|begin_of_docs|>", 1)
    held_out = next(r for r in trajectories if r["question"].strip() in evaluation)
    return right, [*right, wrong, broken, held_out], evaluation


def test_trajectories_become_traces_in_this_projects_protocol(rows, wiki, qwen_tokenizer_dir, tmp_path):
    right, all_rows, evaluation = rows
    path = tmp_path / "trajectories.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in all_rows))
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    traces, skipped = load_traces(str(path), tokenizer, wiki, CFG, evaluation)
    assert [t["question"] for t in traces] == [r["question"].strip() for r in right]
    assert skipped == {"judged wrong": 1, "a broken protocol (a query without documents)": 1,
                       "an excluded question": 1}
    for trace, row in zip(traces, right):
        segments = trace["segments"]
        assert [by_model for _, by_model in segments] == [True, False, True, False, True]
        # the model's text is the trajectory's own, in order; each documents block is what BM25 gives for the query
        position = 0
        for text in (text for text, by_model in segments if by_model):
            position = row["trajectory"].index(text, position) + len(text)
        for (asked, _), (block, by_model) in zip(segments, segments[1:]):
            if not by_model:
                query = asked.rsplit(BEGIN_QUERY, 1)[1].split(END_QUERY)[0].strip()
                assert block == documents_block(wiki.search([query], 3)[0], tokenizer, 64)
        assert segments[-1][0].rstrip().endswith("</answer>")
        # as an episode: each segment tokenised on its own, the mask 1 on the model's ids and 0 on the system's
        episode = trace_episode(tokenizer, build_prompt(tokenizer, trace["question"], chat=True), segments)
        start = 0
        for text, by_model in segments:
            ids = tokenizer(text, add_special_tokens=False).input_ids
            assert episode.ids[start:start + len(ids)] == ids
            assert episode.loss_mask[start:start + len(ids)] == [int(by_model)] * len(ids)
            start += len(ids)
        assert start == len(episode.ids) <= CFG.max_episode_tokens


def test_an_empty_query_gets_what_a_rollout_injects_for_it(rows, wiki, qwen_tokenizer_dir, tmp_path):
    row = dict(rows[0][0])
    text = row["trajectory"]
    start = text.index(BEGIN_QUERY) + len(BEGIN_QUERY)
    row["trajectory"] = text[:start] + text[text.index(END_QUERY, start):]
    path = tmp_path / "trajectories.jsonl"
    path.write_text(json.dumps(row) + "\n")
    traces, _ = load_traces(str(path), AutoTokenizer.from_pretrained(qwen_tokenizer_dir), wiki, CFG, set())
    segments = traces[0]["segments"]
    assert segments[0][0].endswith(BEGIN_QUERY + END_QUERY)
    assert segments[1] == (message_block(EMPTY_QUERY), False)  # not BM25's passages for ""


def test_a_few_sft_steps_on_real_traces_lower_the_loss(rows, wiki, tiny_qwen_dir, tmp_path):
    right, _, _ = rows
    path = tmp_path / "trajectories.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in right))
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    traces, _ = load_traces(str(path), tokenizer, wiki, CFG, set())
    episodes = [trace_episode(tokenizer, build_prompt(tokenizer, t["question"], chat=True), t["segments"])
                for t in traces]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = [sft_step(model, optimizer, episodes, tokenizer.pad_token_id) for _ in range(4)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - 1.0, losses


def test_a_broken_trace_file_is_named_with_its_line(wiki, qwen_tokenizer_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    path = tmp_path / "traces.jsonl"
    path.write_text('{"question": "Q?", "segments": [["a", true]]}\n{"question": "Q?"}\n')
    with pytest.raises(ValueError, match=f"{path}:2: a trace needs 'question' and 'segments'"):
        load_traces(str(path), tokenizer, wiki, CFG, set())
    path.write_text('{"question": "Q?", "segments": [["a", true], "b"]}\n')
    with pytest.raises(ValueError, match=f"{path}:1: 'segments' must be"):
        load_traces(str(path), tokenizer, wiki, CFG, set())
