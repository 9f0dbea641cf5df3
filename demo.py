"""The offline demo: a tiny model learns to search a fictional world, on a laptop CPU, in about 10 minutes.

    python demo.py            # writes runs/demo/: summary.json, training.png, metrics.jsonl, the adapters

1. two worlds (minisearcher.toyworld): one to train on, one held out, sharing no name;
2. the cold start (minisearcher.curriculum): a 0.47M-parameter Qwen2 from random weights learns to read, to copy
   names and to follow the protocol;
3. stage 1 and stage 2 of GRPO with LoRA on the training world: train.py itself, with the flags of RL below;
4. every model on 200 questions of the held-out world, greedy, in search mode (minisearcher.evaluation).
"""
import argparse
import json
import os
import sys
from dataclasses import replace

import matplotlib

import train
from minisearcher import toyworld
from minisearcher.curriculum import cold_start
from minisearcher.data import write_jsonl
from minisearcher.evaluation import evaluate
from minisearcher.model import load_policy
from minisearcher.options import rollout_config
from minisearcher.plot import plot_training, read_metrics
from minisearcher.retriever import BM25

WORLD = dict(n_people=300, n_cities=120, n_companies=120, n_works=160)  # 700 passages, 750 questions
EVAL_QUESTIONS = 200  # of the held-out world
# train.py's flags for the two GRPO stages. The KL term keeps both stages near the cold-start model, which can read
# (stage 1 pays for searching, not for answers); temperature 0.7 because at 1 the tiny model garbles names in its
# samples far more often than in its greedy answers (docs/DEMO.md).
RL = dict(questions_per_step=8, group_size=8, lr=5e-4, beta=0.04, temperature=0.7, top_k=1, doc_tokens=64,
          max_turn_tokens=100, max_episode_tokens=400, micro_batch=16, dtype="float32", save_every=10)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sft-steps", type=int, default=700, help="steps of the cold start's last phase")
    p.add_argument("--stage1-steps", type=int, default=15)
    p.add_argument("--steps", type=int, default=40, help="steps of stage 2")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo in --out")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    log, model_dir = os.path.join(args.out, "cold_start.jsonl"), os.path.join(args.out, "sft-model")
    saved, options = os.path.join(args.out, "demo.json"), {k: v for k, v in vars(args).items() if k != "resume"}
    if os.path.exists(saved) and not args.resume:
        sys.exit(f"error: --out {args.out} already holds a run; pass --resume to continue it or choose another --out")
    if args.resume and os.path.exists(saved):
        with open(saved) as f:
            if json.load(f) != options:
                sys.exit(f"error: --resume: the demo in {args.out} ran with other options ({saved})")
    os.makedirs(args.out, exist_ok=True)
    with open(saved, "w") as f:
        json.dump(options, f)
    world, held_out = toyworld.make_worlds(args.seed, 2, **WORLD)
    questions, corpus = os.path.join(args.out, "questions.jsonl"), os.path.join(args.out, "corpus.jsonl")
    write_jsonl(world.questions, questions)
    write_jsonl(world.passages, corpus)

    if not os.path.isdir(model_dir):  # a cold start that did not finish is run again from its start
        if os.path.exists(log):
            os.remove(log)
        cold_start(model_dir, log, args.seed, args.sft_steps, RL["top_k"], RL["doc_tokens"])

    flags = {**RL, "model": model_dir, "train_data": questions, "corpus": corpus, "out": args.out,
             "stage1_steps": args.stage1_steps, "steps": args.steps, "seed": args.seed}
    argv = [token for key, value in flags.items() for token in (f"--{key.replace('_', '-')}", str(value))]
    if not os.path.isdir(os.path.join(args.out, "stage2")):  # the RL stages have not finished
        resume = ["--resume"] if os.path.exists(os.path.join(args.out, "config.json")) else []
        print("python train.py " + " ".join(argv + resume))
        train.main(argv + resume)

    config = rollout_config(train.parse_args(argv), temperature=0)
    test = BM25(held_out.passages)
    summary = {}
    limit = config.max_searches
    for name, adapter, searches in [("no_search", None, 0), ("sft", None, limit), ("stage1", "stage1", limit),
                                    ("stage2", "stage2", limit)]:
        model, tokenizer = load_policy(model_dir, dtype=RL["dtype"], trainable=False,
                                       adapter=adapter and os.path.join(args.out, adapter))
        # all questions in one batch: a greedy row decodes the same in any batch (tests), and so small a model's
        # steps are mostly overhead, so one batch of 200 takes half the time of batches of 16
        summary[name], _ = evaluate(model, tokenizer, test, held_out.questions[:EVAL_QUESTIONS], "search",
                                    replace(config, max_searches=searches), chat=False, batch_size=EVAL_QUESTIONS)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("\nheld-out world, greedy:\n| model | cover_em | f1 | searches_mean | n |\n|---|---|---|---|---|")
    for name, m in summary.items():
        print(f"| {name} | {m['cover_em']:.3f} | {m['f1']:.3f} | {m['searches_mean']:.2f} | {m['n']} |")
    matplotlib.use("Agg")  # a file, not a window
    plot_training(read_metrics(os.path.join(args.out, "metrics.jsonl"))).savefig(
        os.path.join(args.out, "training.png"), dpi=120)


if __name__ == "__main__":
    main()
