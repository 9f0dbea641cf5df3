"""Search rollouts against plain batched generation and against the naive re-tokenising loop, on a CPU.

    nice -n 10 python benchmarks/rollout.py                      # B=8 questions x G=8 episodes
    nice -n 10 python benchmarks/rollout.py --against 7a72985    # also the rollout.py of that commit, side by side
    nice -n 10 python benchmarks/rollout.py --grpo-step          # instead: the retrieval share of one GRPO step

The model is a ~20M-parameter Qwen2 (real Qwen tokenizer, 151,936-row vocabulary) fitted on the toy world's traces
so that it really pauses and searches (benchmarks/searcher.py; fitted once, cached in runs/benchmarks/). It is
loaded through the project's own path, minisearcher.model.load_policy (LoRA, float32 on a CPU), and the four
generators below use that same peft model:

- rollout:   minisearcher.rollout.rollout on B x G prompts (temperature 1).
- generate:  plain batched `model.generate` on the same B x G prompts, with min_new_tokens = max_new_tokens set so
             that it samples as many tokens as the rollout did (no search, no pause).
- plain loop: the same, but through the rollout's own feed() and sample(), so that the comparison isolates what
             pausing, searching and resuming cost (transformers' generate samples with torch.multinomial, which is
             slow on a CPU, so it is the easier baseline).
- naive:     one episode at a time: generate until a stop string, decode, search, append the documents as text,
             re-tokenise the whole text and generate again (R1-Searcher's released code and simple ports work this
             way). It runs on the first --naive-episodes episodes; sequential, so its rate does not depend on how many.

Tokens per second count sampled tokens only (the injected documents are not generated). "positions" counts every
position a forward pass computed, padding included; the minimum for an episode is its prompt plus its injected and
sampled tokens (each computed once). One thread by default: see docs/PERFORMANCE.md.
"""
import argparse
import math
import os
import sys
import time

import torch
from transformers import DynamicCache

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..")]
import searcher  # noqa: E402
from common import module_from_git  # noqa: E402
from minisearcher import rewards  # noqa: E402
from minisearcher.grpo import GRPOConfig, collate, group_advantages, grpo_update, token_logprobs  # noqa: E402
from minisearcher.model import load_policy  # noqa: E402
from minisearcher.prompts import BEGIN_QUERY, END_ANSWER, END_QUERY, LIMIT_REACHED, build_prompt  # noqa: E402
from minisearcher.prompts import documents_block, message_block  # noqa: E402
from minisearcher.retriever import BM25  # noqa: E402
from minisearcher.rollout import RolloutConfig, feed, rollout, sample  # noqa: E402
from retrieval import synthetic_corpus  # noqa: E402


class TimedRetriever:
    """Wraps a retriever, adds up the time spent inside search() and keeps the batches of queries."""

    def __init__(self, inner):
        self.inner, self.seconds, self.batches = inner, 0.0, []

    def search(self, queries, k):
        start = time.perf_counter()
        found = self.inner.search(queries, k)
        self.seconds += time.perf_counter() - start
        self.batches.append(queries)
        return found


class PositionCounter:
    """Counts what the model's forward passes compute: passes (sequential steps), positions (rows x new tokens,
    padding included) and the row-steps of one-token (decode) passes."""

    def __init__(self, model):
        self.reset()
        model.get_base_model().register_forward_pre_hook(self.hook, with_kwargs=True)

    def reset(self):
        self.passes = self.positions = self.decode = 0

    def hook(self, module, args, kwargs):
        ids = kwargs["input_ids"]
        self.passes += 1
        self.positions += ids.numel()
        self.decode += ids.shape[0] if ids.shape[1] == 1 else 0


def measure(fn, counter, seed: int, repeat: int) -> dict:
    """Run fn() `repeat` times from the same seed; keep the fastest run. fn returns (sampled tokens, anything)."""
    best = None
    for _ in range(repeat):
        torch.manual_seed(seed)
        counter.reset()
        start = time.perf_counter()
        with torch.no_grad():
            sampled, out = fn()
        seconds = time.perf_counter() - start
        if best is None or seconds < best["seconds"]:
            best = {"seconds": seconds, "sampled": sampled, "out": out, "passes": counter.passes,
                    "positions": counter.positions, "decode": counter.decode}
    return best


def naive_rollout(model, tokenizer, retriever, prompts: list[str], cfg: RolloutConfig) -> list[dict]:
    """The per-episode loop that re-tokenises the whole text after every search. Benchmark only."""
    results = []
    for prompt in prompts:
        text, sampled, searches = prompt, 0, 0
        n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        while True:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
            budget = min(cfg.max_turn_tokens, cfg.max_episode_tokens - (ids.shape[1] - n_prompt))
            if budget <= 0:
                break
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget,
                                 do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 stop_strings=[END_QUERY, END_ANSWER], tokenizer=tokenizer,
                                 pad_token_id=tokenizer.pad_token_id)
            new = out[0, ids.shape[1]:]
            sampled += len(new)
            turn = tokenizer.decode(new, skip_special_tokens=True)
            text += turn
            if not turn.rstrip().endswith(END_QUERY):
                break
            if searches < cfg.max_searches:
                query = turn.rsplit(BEGIN_QUERY, 1)[-1].split(END_QUERY)[0].strip()
                text += documents_block(retriever.search([query], cfg.top_k)[0], tokenizer, cfg.doc_tokens)
                searches += 1
            else:
                text += message_block(LIMIT_REACHED)
        results.append({"sampled": sampled, "searches": searches})
    return results


def plain_loop(model, tokenizer, prompts: list[str], n_tokens: int) -> int:
    """Plain batched sampling with the rollout's own feed() and sample(): no stop strings, no search, no pause."""
    tokens = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    cache, mask = DynamicCache(), torch.zeros((len(prompts), 0), dtype=torch.long)
    logits, mask = feed(model, tokens, cache, mask, tokenizer.pad_token_id)
    generators = [torch.Generator().manual_seed(row) for row in range(len(prompts))]
    for step in range(n_tokens):
        ids, _ = sample(logits, 1.0, generators)
        if step < n_tokens - 1:
            logits, mask = feed(model, [[i] for i in ids], cache, mask, tokenizer.pad_token_id)
    return n_tokens * len(prompts)


def check_exactness(model, tokenizer, episodes) -> float:
    """Max |recorded log-prob - log-prob of a fresh forward of the final ids| over the sampled tokens."""
    batch = collate(episodes, tokenizer.pad_token_id, "cpu")
    K = batch["K"]
    with torch.no_grad():
        fresh = token_logprobs(model, batch["ids"], batch["attention"], K)
    mask = batch["loss_mask"][:, -K:].bool()
    return (fresh - batch["old_logp"][:, -K:])[mask].abs().max().item()


def grpo_step_share(model, tokenizer, retriever, world, cfg, B, G) -> dict:
    """One GRPO step of the toy world (stage 2 reward): rollout, rewards, advantages, update. Time inside search."""
    timed = TimedRetriever(retriever)
    questions = world.questions[:B]
    prompts = [build_prompt(tokenizer, q["question"], chat=False) for q in questions for _ in range(G)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    start = time.perf_counter()
    model.eval()
    episodes = rollout(model, tokenizer, timed, prompts, cfg)
    t_rollout = time.perf_counter() - start
    scores = torch.tensor([rewards.reward(2, e.model_text, e.n_searches, q["answers"])
                           for e, q in zip(episodes, [q for q in questions for _ in range(G)])])
    advantages = group_advantages(scores.view(B, G)).flatten()
    model.train()
    grpo_update(model, optimizer, episodes, advantages, tokenizer.pad_token_id, GRPOConfig())
    total = time.perf_counter() - start
    return {"total": total, "rollout": t_rollout, "search": timed.seconds, "batches": timed.batches}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--questions", type=int, default=8, help="B")
    p.add_argument("--group", type=int, default=8, help="G, episodes per question")
    p.add_argument("--naive-episodes", type=int, default=16)
    p.add_argument("--against", nargs="*", default=[],
                   help="git revisions whose rollout.py runs side by side with the working tree's (before/after)")
    p.add_argument("--grpo-step", action="store_true",
                   help="instead: time one GRPO step (B=4, G=4) and the share of it spent in retrieval")
    p.add_argument("--fit-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1, help="runs of each generator; the fastest counts")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: see docs/PERFORMANCE.md)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    folder = searcher.fit("tiny", steps=args.fit_steps)
    model, tokenizer = load_policy(folder, load_in_4bit=False, dtype="float32")
    model.eval()
    world, retriever, _ = searcher.toy_setup(tokenizer)
    cfg = RolloutConfig()  # train.py's defaults: 4 searches, top-3, 128 tokens a passage, 256 a turn, 1024 an episode
    questions = world.questions[:args.questions]
    prompts = [build_prompt(tokenizer, q["question"], chat=False) for q in questions for _ in range(args.group)]
    counter = PositionCounter(model)
    print(f"model: Qwen2, {searcher.n_params(model)}, hidden {model.config.hidden_size}, "
          f"{model.config.num_hidden_layers} layers, + LoRA r=16; float32, {torch.get_num_threads()} threads")
    print(f"batch: {args.questions} questions x {args.group} episodes = {len(prompts)} episodes; {cfg}")

    rollout(model, tokenizer, retriever, prompts[:2], RolloutConfig(max_episode_tokens=32))  # warm up

    if args.grpo_step:  # only this
        s = grpo_step_share(model, tokenizer, retriever, world, cfg, B=4, G=4)
        n_queries = sum(map(len, s["batches"]))
        print(f"\nGRPO step (4 questions x 4 episodes, stage-2 reward, LoRA update): {s['total']:.1f}s, rollout "
              f"{s['rollout']:.1f}s; inside retriever.search {s['search'] * 1e3:.1f} ms for {n_queries} queries in "
              f"{len(s['batches'])} batches = {100 * s['search'] / s['total']:.3f}% of the step (target < 5%)")
        big = BM25(synthetic_corpus(100_000))  # the same batches of queries against a 100k-passage index
        start = time.perf_counter()
        for queries in s["batches"]:
            big.search(queries, cfg.top_k)
        t_big = time.perf_counter() - start
        print(f"the same query batches on a 100k-passage index (benchmarks/retrieval.py's corpus): "
              f"{t_big * 1e3:.0f} ms = {100 * t_big / s['total']:.2f}% of this step")
        return

    timed = TimedRetriever(retriever)

    def search_rollout(fn):
        def run():
            timed.seconds = 0.0
            episodes = fn(model, tokenizer, timed, prompts, cfg)
            return sum(sum(e.loss_mask) for e in episodes), (episodes, timed.seconds)
        return run

    variants = {f"rollout @ {rev}": module_from_git(rev, "rollout").rollout for rev in args.against}
    variants["rollout"] = rollout
    runs = {}
    for _ in range(args.repeat):  # interleaved, so that a slow spell of the machine hits every variant
        for name, fn in variants.items():
            run = measure(search_rollout(fn), counter, args.seed, 1)
            if name not in runs or run["seconds"] < runs[name]["seconds"]:
                runs[name] = run
    ours = runs["rollout"]
    episodes, search_seconds = ours["out"]
    n = len(episodes)
    prompt_tokens = sum(len(e.prompt_ids) for e in episodes)
    injected = sum(len(e.ids) - sum(e.loss_mask) for e in episodes)
    minimum = prompt_tokens + injected + ours["sampled"]
    per_row = math.ceil(ours["sampled"] / n)  # plain generation samples as many tokens, spread evenly over the rows

    def generate():
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=per_row,
                             min_new_tokens=per_row, pad_token_id=tokenizer.pad_token_id)
        return (out.shape[1] - batch.input_ids.shape[1]) * n, None

    runs["plain generate (no search)"] = measure(generate, counter, args.seed, args.repeat)
    runs["plain loop, same sampler"] = measure(lambda: (plain_loop(model, tokenizer, prompts, per_row), None),
                                               counter, args.seed, args.repeat)

    def naive():
        results = naive_rollout(model, tokenizer, retriever, prompts[:args.naive_episodes], cfg)
        return sum(r["sampled"] for r in results), results
    runs["naive re-tokenising loop"] = measure(naive, counter, args.seed, 1)
    naive_searches = sum(r["searches"] for r in runs["naive re-tokenising loop"]["out"]) / args.naive_episodes

    stops = {s: sum(e.stop == s for e in episodes) for s in ("answer", "eos", "length")}
    print(f"\nepisodes: {ours['sampled'] / n:.0f} sampled + {injected / n:.0f} injected tokens after a "
          f"{prompt_tokens / n:.0f}-token prompt; {sum(e.n_searches for e in episodes) / n:.2f} searches each "
          f"(naive loop: {naive_searches:.2f}); stops {stops}; "
          f"format ok {sum(rewards.format_ok(e.model_text) for e in episodes)}/{n}; best of {args.repeat} runs")

    rate = ours["sampled"] / ours["seconds"]
    print(f"\n{'':28s} {'episodes':>8s} {'seconds':>8s} {'sampled tok/s':>13s} {'forward passes':>14s} "
          f"{'positions/episode':>17s} {'rollout is':>10s}")
    for name, run in runs.items():
        rows = args.naive_episodes if name.startswith("naive") else n
        print(f"{name:28s} {rows:8d} {run['seconds']:8.1f} {run['sampled'] / run['seconds']:13.0f} "
              f"{run['passes']:14d} {run['positions'] / rows:17.0f} "
              f"{rate / (run['sampled'] / run['seconds']):9.2f}x")
        if name.startswith("rollout @"):
            same = sum(a.ids == b.ids for a, b in zip(run["out"][0], episodes))
            print(f"{'':28s}   {run['sampled'] / n:.0f} sampled tokens an episode, "
                  f"{sum(e.n_searches for e in run['out'][0]) / n:.2f} searches; {same}/{n} episodes identical")

    def ratio(name):
        return rate / (runs[name]["sampled"] / runs[name]["seconds"])
    print(f"\nrollout / plain generate, sampled tokens per second: {ratio('plain generate (no search)'):.2f} "
          f"(target >= 0.8); / a plain loop with the rollout's own sampler: {ratio('plain loop, same sampler'):.2f}")
    print(f"rollout / naive loop: {ratio('naive re-tokenising loop'):.1f}x faster")
    print(f"positions computed per episode: {ours['positions'] / n:.0f}, minimum (prompt + injected + sampled) "
          f"{minimum / n:.0f}: {ours['positions'] / minimum:.2f}x the minimum")
    print(f"decode row-steps per sampled token: {ours['decode'] / ours['sampled']:.2f} (rows that wait for the round "
          f"to end take part in every forward pass; plain generation: 1.00); forward passes: {ours['passes']}, "
          f"longest episode: {max(sum(e.loss_mask) for e in episodes)} sampled tokens")
    print(f"time inside retriever.search during the rollout: {search_seconds * 1e3:.0f} ms "
          f"({100 * search_seconds / ours['seconds']:.2f}% of the rollout)")
    print(f"token exactness, 4 episodes: max |recorded - fresh| log-prob on sampled tokens "
          f"{check_exactness(model, tokenizer, episodes[:4]):.1e}")


if __name__ == "__main__":
    main()
