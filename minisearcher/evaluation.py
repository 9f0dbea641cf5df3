"""Evaluation as in the R1-Searcher paper: greedy episodes, then EM, F1 and Cover-EM against the gold answers.

    naive        answer from memory, no retrieval
    rag          one BM25 search with the question itself, its top-k passages in the prompt, then answer
    search       the R1-Searcher protocol: the model writes its own queries, mid-reasoning, as in training
    naive-plain  naive and rag without the think/answer protocol: "Answer the question with a short phrase only.",
    rag-plain    then the model's first line is its answer, at most 24 tokens (a fairer bar for an untrained model)

All go through the same rollout() as training, greedy (temperature 0); all but search have max_searches=0 (a model
that queries anyway is told the limit is reached).
"""
import re
from dataclasses import replace

from tqdm import tqdm

from .prompts import (ANSWER, BEGIN_QUERY, END_ANSWER, END_QUERY, END_THINK, THINK, build_baseline_prompt,
                      build_plain_prompt, build_prompt, documents_block, numbered_passages)
from .rewards import cover_em, exact_match, extract_answer, f1_score, format_ok, normalize_answer
from .rollout import RolloutConfig, rollout

MODES = ["naive", "rag", "search", "naive-plain", "rag-plain"]
PLAIN_TOKENS = 24
TAGS = re.compile("|".join(map(re.escape, [THINK, END_THINK, ANSWER, END_ANSWER, BEGIN_QUERY, END_QUERY])))


def make_prompts(tokenizer, retriever, questions: list[str], mode: str, cfg: RolloutConfig, chat: bool) -> list[str]:
    if mode == "search":
        return [build_prompt(tokenizer, q, chat) for q in questions]
    if mode == "naive":
        return [build_baseline_prompt(tokenizer, q, chat) for q in questions]
    if mode == "naive-plain":
        return [build_plain_prompt(tokenizer, q, chat) for q in questions]
    found = retriever.search(questions, cfg.top_k)  # rag: the question is the query
    if mode == "rag-plain":
        return [build_plain_prompt(tokenizer, q, chat, numbered_passages(docs, tokenizer, cfg.doc_tokens))
                for q, docs in zip(questions, found)]
    return [build_baseline_prompt(tokenizer, q, chat, documents_block(docs, tokenizer, cfg.doc_tokens))
            for q, docs in zip(questions, found)]


def predict(model_text: str) -> str:
    """The answer inside <answer> tags, as the paper scores it. Without tags (an untrained model often writes
    "The answer is: X." and stops) we score the model's last non-empty line, tags removed, rather than "": the
    record's `answered` says which it was, and the `answered` column shows how often the format was followed."""
    lines = [line.strip() for line in TAGS.sub(" ", model_text).splitlines() if line.strip()]
    return extract_answer(model_text) or (lines[-1] if lines else "")


def first_line(model_text: str) -> str:
    return next((line.strip() for line in model_text.splitlines() if line.strip()), "")


def found(segments: list[tuple[str, bool]], golds: list[str], style: str = "paper") -> bool:
    """Is a gold answer, as whole words, in the documents the model's own searches brought? Beside Cover-EM it tells
    a retrieval miss from a reading miss. A yes/no gold never counts: any passage may hold the word."""
    documents = f" {normalize_answer(' '.join(text for text, by_model in segments if not by_model), style)} "
    return any(gold not in ("", "yes", "no") and f" {gold} " in documents
               for gold in (normalize_answer(g, style) for g in golds))


def record(question: dict, prompt: str, episode, mode: str, style: str = "paper") -> dict:
    text, golds = episode.model_text, question["answers"]
    prediction = first_line(text) if mode.endswith("plain") else predict(text)
    return {"question": question["question"], "golds": golds, "prediction": prediction,
            "em": exact_match(prediction, golds, style), "f1": f1_score(prediction, golds, style),
            "cover_em": cover_em(prediction, golds, style), "answered": bool(extract_answer(text)),
            "format_ok": format_ok(text), "found": found(episode.segments, golds, style),
            "searches": episode.n_searches, "tokens": sum(episode.loss_mask), "stop": episode.stop,
            "queries": episode.queries, "prompt": prompt, "segments": episode.segments}


def evaluate(model, tokenizer, retriever, questions: list[dict], mode: str, cfg: RolloutConfig, chat: bool,
             batch_size: int = 16, style: str = "paper") -> tuple[dict, list[dict]]:
    """Greedy episodes for every question -> (mean metrics, one record per question). `style`: the answers'
    normalisation (rewards.normalize_answer), the paper's by default.

    searches_mean counts the model's own searches (rag's one search with the question is not one of them), and found
    the questions whose gold answer is in the documents those searches brought;
    tokens_mean counts the tokens the model generated, not the documents injected."""
    cfg = replace(cfg, temperature=0.0, max_searches=cfg.max_searches if mode == "search" else 0)
    if mode.endswith("plain"):
        cfg = replace(cfg, max_turn_tokens=PLAIN_TOKENS, max_episode_tokens=PLAIN_TOKENS)
    model.eval()
    records = []
    for start in tqdm(range(0, len(questions), batch_size), desc=mode, unit="batch"):
        batch = questions[start:start + batch_size]
        prompts = make_prompts(tokenizer, retriever, [q["question"] for q in batch], mode, cfg, chat)
        episodes = rollout(model, tokenizer, retriever, prompts, cfg)
        records += [record(q, p, e, mode, style) for q, p, e in zip(batch, prompts, episodes)]

    def mean(key):
        return sum(r[key] for r in records) / len(records)
    metrics = {key: mean(key) for key in ["em", "f1", "cover_em", "answered", "format_ok", "found"]}
    return {"n": len(records), **metrics, "searches_mean": mean("searches"), "tokens_mean": mean("tokens")}, records
