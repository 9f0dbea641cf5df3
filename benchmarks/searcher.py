"""A tiny Qwen2 that really pauses and searches, for the rollout benchmarks.

A random-weight model never writes <|end_of_query|>, so a benchmark on it would measure plain generation. Instead we
fit a small Qwen2 (real Qwen tokenizer, full 151,936-row vocabulary) for a few hundred steps on the toy world's
cold-start traces (sft.sft_trace, mostly the "full" style: two searches), then roll it out at temperature 1.

The fit is affordable on a CPU (300 steps, ~20 minutes on 2 shared cores) because only ~400 of the 151,936 token ids
ever occur in the toy world. The rows of all the others are fixed at zero, so their logits are exactly 0 and the
full-vocabulary softmax is the softmax over the used rows plus one constant column log(V - U). We therefore train a
model whose vocabulary is just the U used ids (the same transformer and, up to float rounding, the same loss), then
copy its weights into the full-vocabulary model with zero rows everywhere else. At rollout time the model samples
from all 151,936 ids at full cost.

The result is cached in runs/benchmarks/ (git-ignored); delete it to fit again.
"""
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from common import qwen_tokenizer_dir
from minisearcher import toyworld
from minisearcher.grpo import collate
from minisearcher.prompts import build_prompt, documents_block
from minisearcher.retriever import BM25
from minisearcher.sft import sft_trace, trace_episode

CACHE = os.path.join(os.path.dirname(__file__), "..", "runs", "benchmarks")
VOCAB = 151936  # Qwen2.5's embedding rows (the tokenizer uses 151,669 of them)
SIZES = {"tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2)}


def toy_setup(tokenizer, seed: int = 0):
    """The toy training world, its BM25 index and one cold-start trace episode per question."""
    world = toyworld.make_world(seed)
    retriever = BM25(world.passages)
    rng = random.Random(seed)

    def documents(query):
        return documents_block(retriever.search([query], 3)[0], tokenizer, 128)

    episodes = []
    for q in world.questions:
        style = rng.choice(["full", "full", "full", "one"])  # mostly two searches: several pauses per episode
        e = trace_episode(tokenizer, build_prompt(tokenizer, q["question"], chat=False),
                          sft_trace(q, style, documents, rng))
        e.extend([tokenizer.eos_token_id], "", True)  # so that the model learns to stop
        episodes.append(e)
    return world, retriever, episodes


def fit(size: str = "tiny", steps: int = 300, batch: int = 8, lr: float = 3e-3, seed: int = 0) -> str:
    """Fit (or reuse) the searching model; returns a folder that from_pretrained and load_policy read."""
    folder = os.path.abspath(os.path.join(CACHE, f"searcher-{size}-{steps}"))
    if os.path.exists(os.path.join(folder, "config.json")):
        return folder
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    _, _, episodes = toy_setup(tokenizer, seed)
    used = sorted({i for e in episodes for i in e.prompt_ids + e.ids})  # the U token ids of the toy world
    remap = {t: i for i, t in enumerate(used)}
    for e in episodes:
        e.prompt_ids, e.ids = [remap[t] for t in e.prompt_ids], [remap[t] for t in e.ids]

    torch.manual_seed(seed)
    config = dict(SIZES[size], max_position_embeddings=4096, tie_word_embeddings=True)
    small = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(used), **config))
    optimizer = torch.optim.AdamW(small.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1, (s + 1) / 20) * (1 - s / steps))
    rest = math.log(VOCAB - len(used))  # logsumexp of the V - U zero logits of the unused rows
    rng, start = random.Random(seed), time.time()
    small.train()
    for step in range(steps):
        b = collate(rng.sample(episodes, batch), pad_id=0, device="cpu")
        positions = (b["attention"].cumsum(1) - 1).clamp(min=0)
        logits = small(input_ids=b["ids"], attention_mask=b["attention"], position_ids=positions).logits[:, :-1]
        picked = b["loss_mask"][:, 1:].bool()  # (N, T-1) the model's own tokens
        logits = logits[picked]  # (M, U)
        logits = torch.cat([logits, torch.full((len(logits), 1), rest)], dim=1)  # (M, U + 1)
        loss = F.cross_entropy(logits, b["ids"][:, 1:][picked])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(small.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == steps - 1:
            print(f"  fit step {step:4d}  loss {loss.item():.3f}  {time.time() - start:5.0f}s", flush=True)

    full = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, eos_token_id=tokenizer.eos_token_id, **config))
    state = small.state_dict()
    embed = torch.zeros(VOCAB, config["hidden_size"])
    embed[torch.tensor(used)] = state["model.embed_tokens.weight"]
    state["model.embed_tokens.weight"] = state["lm_head.weight"] = embed
    full.load_state_dict(state)
    full.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def n_params(model) -> str:
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    return f"{total / 1e6:.1f}M parameters ({embed / 1e6:.1f}M of them the tied embedding)"
