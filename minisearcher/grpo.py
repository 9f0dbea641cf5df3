"""GRPO: group-normalised advantages and the clipped, masked policy loss with a KL penalty.

The reference policy is the model with its LoRA adapter disabled, so its log-probs cost a forward pass and no memory
(or, optionally, a frozen copy of the adapter's own weights: the stage-1 model, a few MB).
The "old" policy is the one that sampled: its log-probs were recorded token by token during the rollout.
One step, as `grpo_step` runs it: questions -> rollout -> rewards -> group advantages -> clipped masked loss -> update.
"""
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from .episode import Episode
from .prompts import build_prompt
from .rewards import extract_answer, f1_score, format_ok, reward
from .rollout import RolloutConfig, rollout


@dataclass
class GRPOConfig:
    group_size: int = 8  # G episodes per question
    clip_eps: float = 0.2
    beta: float = 0.001  # weight of the KL penalty
    scale_by_std: bool = True  # False: "Dr. GRPO", advantages are only centred
    updates: int = 1  # optimizer steps per rollout batch (mini-batches)
    micro_batch: int = 4  # episodes per forward/backward pass; gradients accumulate over a mini-batch
    max_grad_norm: float = 1.0
    format_penalty: float = 2.0  # stage 2's reward for a broken format is F1 - this


def group_advantages(rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """rewards: (B, G), G episodes for each of B questions. A_i = (r_i - mean(r_group)) / (std(r_group) + eps)."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + eps) if scale_by_std else centred


def collate(episodes: list[Episode], pad_id: int, device) -> dict:
    """Left-padded batch: every episode ends at the right edge, so its response lies in the last K columns.

    ids, attention, loss_mask, old_logp: (N, T). K = longest response.
    """
    seqs = [e.prompt_ids + e.ids for e in episodes]
    T = max(map(len, seqs))
    batch = {"ids": torch.full((len(seqs), T), pad_id, dtype=torch.long),
             "attention": torch.zeros((len(seqs), T), dtype=torch.long),
             "loss_mask": torch.zeros((len(seqs), T)), "old_logp": torch.zeros((len(seqs), T))}
    for i, (e, s) in enumerate(zip(episodes, seqs)):
        batch["ids"][i, T - len(s):] = torch.tensor(s)
        batch["attention"][i, T - len(s):] = 1
        batch["loss_mask"][i, T - len(e.ids):] = torch.tensor(e.loss_mask, dtype=torch.float)
        batch["old_logp"][i, T - len(e.ids):] = torch.tensor(e.logprobs, dtype=torch.float)
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["K"] = max(len(e.ids) for e in episodes)
    return batch


# Positions whose full-vocabulary logits exist at once: a chunk's backward holds about five (128, 151,936) float32
# tensors, 0.35 GiB; the logits of all K positions of a micro-batch of 4 would be 2.3 GiB each. Smaller chunks are
# slower on a CPU (64: +15%), larger ones no faster.
CHUNK = 128


def token_logprobs(model, ids: torch.Tensor, attention: torch.Tensor, K: int, temperature: float = 1.0,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """(N, K) log pi_T(token | prefix) of the last K tokens of each row, pi_T = softmax(logits / T), the policy the
    rollout sampled from; 0 where `mask` (N, K) is 0: the loss reads only the tokens the policy sampled, so the prompt,
    the documents and the padding cost no logits. Positions count real tokens only, as in the rollout, so the same
    ids give the same log-probs (token exactness), up to float rounding: the rollout computed them a token at a time.

    The transformer runs once over the whole sequence; its hidden states go through the vocabulary head CHUNK
    positions at a time, and each chunk's logits are recomputed in the backward instead of kept, so (N, K, V) logits
    never exist: at V = 151,936 they would outweigh a 3B model's 4-bit weights."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the transformers model
    positions = (attention.cumsum(1) - 1).clamp(min=0)  # (N, T)
    hidden = base.model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False)
    hidden = hidden.last_hidden_state[:, -K - 1:-1]  # (N, K, H): the state at t predicts the token at t + 1
    targets = ids[:, -K:]  # (N, K)
    keep = torch.ones_like(targets, dtype=torch.bool) if mask is None else mask.bool()  # (N, K)
    h, y = hidden[keep], targets[keep]  # (P, H), (P,): the P positions the loss reads
    logp = torch.cat([checkpoint(chunk_logprobs, base.lm_head, h_c, y_c, temperature, use_reentrant=False)
                      for h_c, y_c in zip(h.split(CHUNK), y.split(CHUNK))])  # (P,)
    return logp.new_zeros(keep.shape).masked_scatter(keep, logp)


def chunk_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """(C,) log pi_T of targets (C,) given hidden states (C, H): gather minus logsumexp, as rollout.sample records
    them. The head runs in the model's dtype, as in the rollout; the log-sum-exp over V entries in float32."""
    logits = head(hidden).float()  # (C, V)
    if temperature not in (0, 1):
        logits = logits / temperature
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


@contextmanager
def reference_policy(model, weights: dict | None):
    """pi_ref for the KL term: the model with its LoRA adapter disabled (the base model), or, given `weights`, with
    the adapter's weights swapped for those frozen ones (e.g. the stage-1 model's) during the pass."""
    if weights is None:
        with model.disable_adapter():
            yield
        return
    params = dict(model.named_parameters())
    current = {name: params[name].detach().clone() for name in weights}
    with torch.no_grad():
        for name, w in weights.items():
            params[name].copy_(w)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, w in current.items():
                params[name].copy_(w)


def all_sum(values: list[float]) -> list[float]:
    """The sums over the processes of a data-parallel run (torchrun), or the values themselves in a single one."""
    if not dist.is_initialized():
        return values
    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total)
    return total.tolist()


def optimizer_step(model, optimizer, max_grad_norm: float, loss: float) -> bool:
    """Sum the gradients of all processes (each loss is already divided by the tokens of all of them), clip, and
    step, unless the loss or the gradient norm is not finite (nan or inf): then the gradient is dropped and the
    weights stay as they are. Returns whether the step was taken, the same answer in every process."""
    params = [p for p in model.parameters() if p.requires_grad]
    if dist.is_initialized():
        for p in params:
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad
            dist.all_reduce(p.grad)
        [loss] = all_sum([loss])
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    finite = math.isfinite(loss) and bool(torch.isfinite(norm))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return finite


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, cfg: GRPOConfig, n_tokens: int):
    """Sum over this micro-batch of the per-token loss, divided by the policy tokens of the whole mini-batch.

    logp, old_logp, ref_logp, mask: (N, K); advantages: (N,). ref_logp is None when beta = 0.
    """
    ratio = torch.exp(logp - old_logp)  # (N, K) rho = pi / pi_old
    A = advantages[:, None]
    surrogate = torch.min(ratio * A, torch.clamp(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * A)
    per_token = -surrogate
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        log_r = ref_logp - logp
        kl = torch.exp(log_r) - log_r - 1  # k3 estimator of KL(pi || pi_ref): unbiased, always >= 0
        per_token = per_token + cfg.beta * kl
    loss = (per_token * mask).sum() / n_tokens
    clipped = (((ratio > 1 + cfg.clip_eps) & (A > 0)) | ((ratio < 1 - cfg.clip_eps) & (A < 0))).float()  # no gradient
    return loss, {"kl": (kl * mask).sum().item(), "clipped": (clipped * mask).sum().item()}


def grpo_update(model, optimizer, episodes: list[Episode], advantages: torch.Tensor, pad_id: int, cfg: GRPOConfig,
                temperature: float = 1.0, reference: dict | None = None) -> dict:
    """cfg.updates optimizer steps over the episodes, each on one shuffled mini-batch, with log-probs at the
    rollout's temperature. `reference`: frozen adapter weights for pi_ref (None: the adapter disabled). Returns
    token-mean stats, and how many steps were skipped for a non-finite loss or gradient. In a data-parallel run each
    process holds its share of the episodes, and the loss is averaged over the policy tokens of all of them."""
    device = next(model.parameters()).device
    order = torch.randperm(len(episodes)).tolist()
    mini_batches = [order[i::cfg.updates] for i in range(cfg.updates)]
    totals = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "skipped": 0}
    [all_tokens] = all_sum([sum(sum(e.loss_mask) for e in episodes)])
    for mini in mini_batches:
        n_tokens = max(1, all_sum([sum(sum(episodes[i].loss_mask) for i in mini)])[0])
        # without a KL term, an episode whose advantage is 0 (its group's rewards were all equal) adds nothing to the
        # gradient: it is left out of the passes, and its tokens still count in the mean, so the update is the same
        busy = [i for i in mini if cfg.beta or advantages[i] != 0]
        if not all_sum([len(busy)])[0]:
            continue
        mini_loss = 0.0
        for start in range(0, len(busy), cfg.micro_batch):
            micro = busy[start:start + cfg.micro_batch]
            batch = collate([episodes[i] for i in micro], pad_id, device)
            K = batch["K"]
            mask = batch["loss_mask"][:, -K:]  # (N, K)
            ref_logp = None
            if cfg.beta:  # first, so that its temporaries are freed before the policy pass keeps its activations
                with torch.no_grad(), reference_policy(model, reference):  # pi_ref
                    ref_logp = token_logprobs(model, batch["ids"], batch["attention"], K, temperature, mask)
            logp = token_logprobs(model, batch["ids"], batch["attention"], K, temperature, mask)
            loss, stats = grpo_loss(logp, batch["old_logp"][:, -K:], ref_logp, advantages[micro].to(device), mask, cfg,
                                    n_tokens)
            loss.backward()
            mini_loss += loss.item()
            totals["kl"] += stats["kl"] / max(1, all_tokens)
            totals["clipped"] += stats["clipped"] / max(1, all_tokens)
        totals["skipped"] += not optimizer_step(model, optimizer, cfg.max_grad_norm, mini_loss)
        totals["loss"] += all_sum([mini_loss])[0] * n_tokens / max(1, all_tokens)
    totals["kl"], totals["clipped"] = all_sum([totals["kl"], totals["clipped"]])
    return totals


def grpo_step(model, tokenizer, retriever, questions: list[dict], optimizer, stage: int, rollout_cfg: RolloutConfig,
              cfg: GRPOConfig, chat: bool, reference: dict | None = None, seeds: list[int] | None = None) -> dict:
    """One GRPO step on a batch of B questions: G episodes each (`seeds`: one per episode, for the rollout), their
    rewards, advantages, one update. Returns the step's metrics, over the episodes of all processes."""
    start = time.time()
    G = cfg.group_size
    prompts = [build_prompt(tokenizer, q["question"], chat) for q in questions for _ in range(G)]
    golds = [q["answers"] for q in questions for _ in range(G)]
    model.eval()
    episodes = rollout(model, tokenizer, retriever, prompts, rollout_cfg, seeds)
    rewards = torch.tensor([reward(stage, e.model_text, e.n_searches, g, cfg.format_penalty)
                            for e, g in zip(episodes, golds)])
    advantages = group_advantages(rewards.view(-1, G), scale_by_std=cfg.scale_by_std).flatten()  # (B * G,)
    model.train()
    stats = grpo_update(model, optimizer, episodes, advantages, tokenizer.pad_token_id, cfg, rollout_cfg.temperature,
                        reference)
    n, total, squares, searches, formats, f1, tokens = all_sum([
        len(episodes), rewards.sum().item(), (rewards ** 2).sum().item(), sum(e.n_searches for e in episodes),
        sum(format_ok(e.model_text) for e in episodes),
        sum(f1_score(extract_answer(e.model_text), g) for e, g in zip(episodes, golds)),
        sum(len(e.ids) for e in episodes)])
    return {"reward_mean": total / n, "reward_std": math.sqrt(max(0.0, squares - total ** 2 / n) / max(1, n - 1)),
            "searches_mean": searches / n, "format_ok": formats / n, "f1_mean": f1 / n, **stats, "tokens": int(tokens),
            "seconds": time.time() - start}
