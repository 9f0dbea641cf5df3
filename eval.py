"""Evaluate a model on question sets and print one markdown row per set; --json OUT.json writes the metrics there and
each set's predictions to OUT.<set>.jsonl beside it. --help adds the docstring of minisearcher/evaluation.py:

"""
import argparse
import json
import os
import sys
import time

import torch

from minisearcher import evaluation
from minisearcher.data import load_questions, write_jsonl
from minisearcher.evaluation import MODES, evaluate
from minisearcher.model import load_policy
from minisearcher.options import add_model_options, add_rollout_options, open_retriever, positive, rollout_config
from minisearcher.prompts import use_chat
from minisearcher.rollout import RolloutConfig

COLUMNS = ["n", "em", "f1", "cover_em", "answered", "format_ok", "found", "searches_mean", "tokens_mean"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__ + evaluation.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.add_argument("--data", nargs="+", required=True,
                   help="JSON-lines files with question/answer, or `datasets` names[:config][@split]")
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--limit", type=positive(int), help="the first N questions of each set")
    add_rollout_options(p, RolloutConfig(top_k=5, max_searches=8, max_turn_tokens=512, max_episode_tokens=4096))
    p.add_argument("--batch-size", type=positive(int), default=16)
    p.add_argument("--normalize", choices=["paper", "squad"], default="paper",
                   help="answer normalisation: paper (R1-Searcher's scorer: punctuation becomes a space) or squad "
                        "(punctuation deleted)")
    p.add_argument("--json", help="write the metrics here, and the predictions beside it")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:  # every input is checked before the model is loaded and any generation time is spent
        sets = {os.path.splitext(os.path.basename(source))[0]: load_questions(source, args.limit)
                for source in args.data}
        if len(sets) < len(args.data):
            raise ValueError("two --data sets have the same name; their results would overwrite each other")
        retriever = None if args.mode.startswith("naive") else open_retriever(args)  # naive modes never search
        if args.adapter and not os.path.isdir(args.adapter):
            raise ValueError(f"--adapter {args.adapter}: no such folder")
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        model, tokenizer = load_policy(args.model, dtype=args.dtype, adapter=args.adapter, trainable=False)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if not torch.cuda.is_available():  # no 4-bit weights on a CPU: fold LoRA into them, generation is ~25% faster
        model = model.merge_and_unload()
    chat = use_chat(tokenizer, args.prompt)
    cfg = rollout_config(args, temperature=0.0)
    print(f"{retriever or 'no retriever'}, model {args.model}, mode {args.mode}")

    results = {}
    for name, questions in sets.items():
        start = time.time()
        metrics, records = evaluate(model, tokenizer, retriever, questions, args.mode, cfg, chat, args.batch_size,
                                    args.normalize)
        results[name] = {**metrics, "seconds": round(time.time() - start, 1)}
        if args.json:  # written after every set, so that a long run keeps what it has done
            write_jsonl(records, f"{os.path.splitext(args.json)[0]}.{name}.jsonl")
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    print(f"\n| {args.mode} | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, m in results.items():
        print(f"| {name} | {m['n']} | " + " | ".join(f"{m[c]:.3f}" for c in COLUMNS[1:]) + " |")
    return results


if __name__ == "__main__":
    main()
