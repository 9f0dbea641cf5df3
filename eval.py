"""Evaluate a model on question sets, as in the R1-Searcher paper: greedy answers, EM, F1 and Cover-EM.

    naive   answer from memory, no retrieval
    rag     one BM25 search with the question itself, its top-k passages in the prompt, then answer
    search  the R1-Searcher protocol: the model writes its own queries, mid-reasoning, as in training

All three go through the same rollout() as training, greedy (temperature 0); naive and rag differ only in their
prompt and max_searches=0 (a model that queries anyway is told the limit is reached). Prints one markdown row per
question set; --json OUT.json writes the metrics there and each set's predictions to OUT.<set>.jsonl beside it.
"""
import argparse
import json
import os
import re
import sys
import time
from dataclasses import replace

import torch
from tqdm import tqdm

from minisearcher.data import load_corpus, load_questions
from minisearcher.model import load_policy, uses_chat_template
from minisearcher.prompts import (ANSWER, BEGIN_QUERY, END_ANSWER, END_QUERY, END_THINK, THINK, build_baseline_prompt,
                                  build_prompt, documents_block)
from minisearcher.retriever import BM25
from minisearcher.rewards import cover_em, exact_match, extract_answer, f1_score, format_ok
from minisearcher.rollout import RolloutConfig, rollout

MODES = ["naive", "rag", "search"]
COLUMNS = ["n", "em", "f1", "cover_em", "answered", "format_ok", "searches_mean", "tokens_mean"]
TAGS = re.compile("|".join(map(re.escape, [THINK, END_THINK, ANSWER, END_ANSWER, BEGIN_QUERY, END_QUERY])))


def make_prompts(tokenizer, retriever, questions: list[str], mode: str, cfg: RolloutConfig, chat: bool) -> list[str]:
    if mode == "search":
        return [build_prompt(tokenizer, q, chat) for q in questions]
    if mode == "naive":
        return [build_baseline_prompt(tokenizer, q, chat) for q in questions]
    found = retriever.search(questions, cfg.top_k)  # rag: the question is the query
    return [build_baseline_prompt(tokenizer, q, chat, documents_block(docs, tokenizer, cfg.doc_tokens))
            for q, docs in zip(questions, found)]


def predict(model_text: str) -> str:
    """The answer inside <answer> tags, as the paper scores it. Without tags (an untrained model often writes
    "The answer is: X." and stops) we score the model's last non-empty line, tags removed, rather than "": the
    record's `answered` says which it was, and the `answered` column shows how often the format was followed."""
    lines = [line.strip() for line in TAGS.sub(" ", model_text).splitlines() if line.strip()]
    return extract_answer(model_text) or (lines[-1] if lines else "")


def record(question: dict, prompt: str, episode) -> dict:
    text, golds = episode.model_text, question["answers"]
    prediction = predict(text)
    return {"question": question["question"], "golds": golds, "prediction": prediction,
            "em": exact_match(prediction, golds), "f1": f1_score(prediction, golds),
            "cover_em": cover_em(prediction, golds), "answered": bool(extract_answer(text)),
            "format_ok": format_ok(text), "searches": episode.n_searches, "tokens": sum(episode.loss_mask),
            "stop": episode.stop, "queries": episode.queries, "prompt": prompt, "segments": episode.segments}


def evaluate(model, tokenizer, retriever, questions: list[dict], mode: str, cfg: RolloutConfig, chat: bool,
             batch_size: int = 16) -> tuple[dict, list[dict]]:
    """Greedy episodes for every question -> (mean metrics, one record per question).

    searches_mean counts the model's own searches (rag's one search with the question is not one of them);
    tokens_mean counts the tokens the model generated, not the documents injected."""
    cfg = replace(cfg, temperature=0.0, max_searches=cfg.max_searches if mode == "search" else 0)
    model.eval()
    records = []
    for start in tqdm(range(0, len(questions), batch_size), desc=mode, unit="batch"):
        batch = questions[start:start + batch_size]
        prompts = make_prompts(tokenizer, retriever, [q["question"] for q in batch], mode, cfg, chat)
        episodes = rollout(model, tokenizer, retriever, prompts, cfg)
        records += [record(q, p, e) for q, p, e in zip(batch, prompts, episodes)]

    def mean(key):
        return sum(r[key] for r in records) / len(records)
    metrics = {key: mean(key) for key in ["em", "f1", "cover_em", "answered", "format_ok"]}
    return {"n": len(records), **metrics, "searches_mean": mean("searches"), "tokens_mean": mean("tokens")}, records


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct", help="hub id, local folder or .gguf file")
    p.add_argument("--adapter", help="a peft adapter folder written by train.py (e.g. OUT/stage2)")
    p.add_argument("--prompt", choices=["auto", "base", "chat"], default="auto",
                   help="prompt template; auto: chat if the tokenizer has a chat template")
    p.add_argument("--data", nargs="+", required=True,
                   help="JSON-lines files with question/answer, or `datasets` names[:config][@split]")
    p.add_argument("--corpus", required=True, help="JSON lines of passages: id, title, text (or contents)")
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--limit", type=int, help="the first N questions of each set")
    p.add_argument("--top-k", type=int, default=5, help="passages per search")
    p.add_argument("--max-searches", type=int, default=8)
    p.add_argument("--doc-tokens", type=int, default=128, help="each passage is cut to this many tokens")
    p.add_argument("--max-turn-tokens", type=int, default=512)
    p.add_argument("--max-episode-tokens", type=int, default=4096, help="response tokens, sampled and injected")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto")
    p.add_argument("--json", help="write the metrics here, and the predictions beside it")
    args = p.parse_args(argv)
    if args.max_searches < 0 or min(args.top_k, args.doc_tokens, args.max_turn_tokens, args.max_episode_tokens,
                                    args.batch_size, 1 if args.limit is None else args.limit) <= 0:
        p.error("--max-searches must be >= 0; --limit, --top-k, --batch-size and the token limits > 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:  # every input is checked before the model is loaded and any generation time is spent
        sets = {os.path.splitext(os.path.basename(source))[0]: load_questions(source, args.limit)
                for source in args.data}
        if len(sets) < len(args.data):
            raise ValueError("two --data sets have the same name; their results would overwrite each other")
        retriever = BM25(load_corpus(args.corpus))
        if args.adapter and not os.path.isdir(args.adapter):
            raise ValueError(f"--adapter {args.adapter}: no such folder")
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        model, tokenizer = load_policy(args.model, dtype=args.dtype, adapter=args.adapter, trainable=False)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if not torch.cuda.is_available():  # no 4-bit weights on a CPU: fold LoRA into them, generation is ~25% faster
        model = model.merge_and_unload()
    chat = uses_chat_template(tokenizer) if args.prompt == "auto" else args.prompt == "chat"
    cfg = RolloutConfig(args.max_searches, args.top_k, args.doc_tokens, args.max_turn_tokens, args.max_episode_tokens)
    print(f"{len(retriever.passages)} passages, model {args.model}, mode {args.mode}")

    results = {}
    for name, questions in sets.items():
        start = time.time()
        metrics, records = evaluate(model, tokenizer, retriever, questions, args.mode, cfg, chat, args.batch_size)
        results[name] = {**metrics, "seconds": round(time.time() - start, 1)}
        if args.json:  # written after every set, so that a long run keeps what it has done
            with open(f"{os.path.splitext(args.json)[0]}.{name}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    print(f"\n| {args.mode} | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, m in results.items():
        print(f"| {name} | {m['n']} | " + " | ".join(f"{m[c]:.3f}" for c in COLUMNS[1:]) + " |")
    return results


if __name__ == "__main__":
    main()
