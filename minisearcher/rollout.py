"""Rollouts: sample episodes that pause to search, then resume.

All episodes of a batch advance together in rounds. In a round each live episode samples until it writes
<|end_of_query|> (it pauses), writes </answer> or an end-of-sequence token (it is done), or runs out of budget. Then
the queries of every paused episode are searched in one batch, each gets its documents block, and the next round
opens by feeding all the blocks to the model in one prefill. The key/value cache is kept from round to round, so
every token is computed exactly once: prompt + sampled + injected, never the whole prefix again; and a prompt that
the G episodes of a group share is computed once for all G.

Rows that wait (paused or done) feed a padding token whose attention-mask entry is 0, so the cache has holes that no
query ever attends to; positions count real tokens only, so a row sees the same positions as its unpadded sequence.
Rows that are done leave the batch at the end of the round.

The invariants of docs/ARCHITECTURE.md hold here. 1, token exactness: an episode's ids are exactly the sampled ids
plus the ids of each documents block, tokenised on its own; the text is never tokenised again. 2, masking: loss_mask
is 1 on sampled ids only.
"""
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .episode import Episode
from .prompts import BEGIN_QUERY, EMPTY_QUERY, END_ANSWER, END_QUERY, LIMIT_REACHED, documents_block, message_block

# After each sampled token the last TAIL tokens of the turn are decoded to spot a stop string, which may span several
# tokens. Every token holds at least one byte of text, so a stop string of n bytes lies within the last n tokens.
TAIL = max(len(stop.encode()) for stop in (END_QUERY, END_ANSWER))


@dataclass
class RolloutConfig:
    max_searches: int = 4  # then the system tells the model to answer
    top_k: int = 3  # passages per search
    doc_tokens: int = 128  # each passage is cut to this many tokens
    max_turn_tokens: int = 256  # sampled tokens between two searches
    max_episode_tokens: int = 1024  # response tokens, sampled and injected
    temperature: float = 1.0  # 0 = greedy


def stop_token_ids(model, tokenizer) -> set[int]:
    """The ids that end an episode: the model's end-of-sequence ids (an instruct model's end of turn among them)."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    return {i for i in ids if i is not None}


def feed(model, tokens: list[list[int]], cache, mask: torch.Tensor, pad_id: int):
    """Feed each row its pending tokens (right-aligned, left-padded) into the cache.

    mask: (R, S) 1 on the real tokens already in the cache. Returns the next-token logits (R, V) and the new mask.
    """
    R, L = len(tokens), max(map(len, tokens))
    ids = torch.full((R, L), pad_id, dtype=torch.long)  # (R, L)
    new = torch.zeros((R, L), dtype=torch.long)  # (R, L) 1 on the pending tokens
    for r, t in enumerate(tokens):
        if t:
            ids[r, L - len(t):], new[r, L - len(t):] = torch.tensor(t), 1
    mask = torch.cat([mask, new.to(mask.device)], dim=1)  # (R, S + L)
    positions = (mask.cumsum(1) - 1).clamp(min=0)[:, -L:]  # (R, L) count of real tokens before each one
    out = model(input_ids=ids.to(mask.device), attention_mask=mask, position_ids=positions, cache=cache,
                use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].float(), mask


def sample(logits: torch.Tensor, temperature: float,
           generators: list[torch.Generator]) -> tuple[list[int], list[float]]:
    """One token per row from logits (R, V) at the temperature T, the row's uniform drawn from its own generator, with
    its log-probability under the policy that was sampled, pi_T = softmax(logits / T): the ratio and the KL of the
    update use that same pi_T (greedy, T = 0, records log pi_1).

    The log-prob must be what grpo.token_logprobs will compute from a fresh forward, gather minus logsumexp, to the
    bit: a float32 sum over 150k entries depends on how it is done (log_softmax drifts from it by up to 1e-3). So we
    take torch.logsumexp's own steps and keep its exponentials, which are also the weights we sample from.
    """
    if temperature not in (0, 1):
        logits = logits / temperature  # (R, V), as token_logprobs divides them
    top = logits.amax(-1, keepdim=True)  # (R, 1)
    weights = (logits - top).exp_()  # (R, V) the policy's probabilities, unnormalised
    lse = weights.sum(-1, keepdim=True).log_() + top  # (R, 1) equal to logits.logsumexp(-1, keepdim=True)
    if temperature == 0:
        tokens = logits.argmax(-1)
    else:  # inverse-CDF sampling: one uniform per row; several times faster than torch.multinomial on a CPU
        cdf = weights.cumsum_(-1)  # (R, V)
        u = torch.cat([torch.rand(1, 1, generator=g) for g in generators]).to(cdf.device) * cdf[:, -1:]  # (R, 1)
        tokens = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)
    return tokens.tolist(), (logits.gather(1, tokens[:, None]) - lse).squeeze(1).tolist()


@torch.no_grad()
def rollout(model, tokenizer, retriever, prompts: list[str], cfg: RolloutConfig,
            seeds: list[int] | None = None) -> list[Episode]:
    """One episode per prompt (repeat a prompt G times for a GRPO group). Each episode samples from its own generator,
    seeded from `seeds` (default: drawn from torch's), so an episode does not depend on the draws of the others. Its
    logits still round as the batch's shape makes them: where two tokens are nearly as likely, a sample can differ
    in another batch (an untrained model, with its near-uniform logits, is where this shows)."""
    device = next(model.parameters()).device
    seeds = torch.randint(2**62, (len(prompts),)).tolist() if seeds is None else seeds
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    stops = stop_token_ids(model, tokenizer)
    episodes = [Episode(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    # the G episodes of a question share their prompt: feed each distinct prompt once, then copy its cache rows
    distinct = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    cache, mask = DynamicCache(), torch.zeros((len(distinct), 0), dtype=torch.long, device=device)
    logits, mask = feed(model, [episodes[prompts.index(p)].prompt_ids for p in distinct], cache, mask,
                        tokenizer.pad_token_id)
    copies = torch.tensor([distinct[p] for p in prompts], device=device)  # (N,) the prompt row of each episode
    cache.batch_select_indices(copies)
    logits, mask = logits[copies], mask[copies]
    live = list(range(len(episodes)))  # batch row r holds episode live[r]

    while live:
        turn = [[] for _ in live]  # ids sampled this round, per row
        turn_logp = [[] for _ in live]
        outcome = [None] * len(live)  # None while sampling, then "pause", "answer", "eos" or "length"
        while True:
            sampling = [r for r in range(len(live)) if outcome[r] is None]
            # rows that wait cost a forward pass, but no sampling pass (indexing copies the logits: only if some wait)
            tokens, logps = sample(logits[sampling] if len(sampling) < len(live) else logits, cfg.temperature,
                                   [generators[live[r]] for r in sampling])
            tails = tokenizer.batch_decode([turn[r][1 - TAIL:] + [t] for r, t in zip(sampling, tokens)])
            for r, token, logp, tail in zip(sampling, tokens, logps, tails):
                turn[r].append(token)
                turn_logp[r].append(logp)
                used = len(episodes[live[r]].ids) + len(turn[r])
                if token in stops:
                    outcome[r] = "eos"
                elif END_ANSWER in tail:
                    outcome[r] = "answer"
                elif END_QUERY in tail:
                    outcome[r] = "pause"
                elif len(turn[r]) >= cfg.max_turn_tokens or used >= cfg.max_episode_tokens:
                    outcome[r] = "length"
            if all(outcome):
                break
            logits, mask = feed(model, [[] if outcome[r] else [turn[r][-1]] for r in range(len(live))], cache,
                                mask, tokenizer.pad_token_id)

        # close the round: record each row's turn, search for the paused ones in one batch
        searching, blocks = [], {}  # (row, query) to search; row -> (query or None, the block it is given)
        for r, e in enumerate(episodes[i] for i in live):
            ids = turn[r][:-1] if outcome[r] == "eos" else turn[r]  # the eos id is trained on, but is not text
            e.extend(turn[r], tokenizer.decode(ids), True, turn_logp[r])
            e.stop = outcome[r]
            if outcome[r] != "pause":
                continue
            if BEGIN_QUERY not in e.segments[-1][0]:
                e.stop = "unopened"  # nothing to search for: the episode ends, and its format reward says why
                continue
            query = e.segments[-1][0].rsplit(BEGIN_QUERY, 1)[-1].split(END_QUERY)[0].strip()
            if not query:  # not a search: no passages, and stage 1 does not pay for it
                blocks[r] = (None, message_block(EMPTY_QUERY))
            elif e.n_searches >= cfg.max_searches:
                blocks[r] = (None, message_block(LIMIT_REACHED))
            else:
                searching.append((r, query))
        found = retriever.search([q for _, q in searching], cfg.top_k) if searching else []
        blocks |= {r: (q, documents_block(docs, tokenizer, cfg.doc_tokens)) for (r, q), docs in zip(searching, found)}

        keep, pending = [], []  # the rows that go on, and the ids each of them feeds next
        for r, e in enumerate(episodes[i] for i in live):
            if e.stop != "pause":
                continue
            query, block = blocks[r]
            block_ids = tokenizer(block, add_special_tokens=False).input_ids
            if len(e.ids) + len(block_ids) >= cfg.max_episode_tokens:
                e.stop = "length"
                continue
            if query is not None:
                e.queries.append(query)
            e.extend(block_ids, block, False)
            keep.append(r)
            pending.append([turn[r][-1]] + block_ids)  # the turn's last sampled id is not in the cache yet
        if len(keep) < len(live):  # finished rows leave the batch and the cache
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            mask = mask[index]
            live = [live[r] for r in keep]
        if live:
            logits, mask = feed(model, pending, cache, mask, tokenizer.pad_token_id)
    return episodes
