"""Cold-start SFT (as in R1-Searcher++): supervised traces written in the exact protocol teach the format before RL.

A trace is a list of segments (text, written by the model?). Each segment is tokenised on its own, just as the
rollout tokenises each documents block on its own, and the documents blocks are masked out of the loss.
"""
import torch

from .grpo import collate, token_logprobs
from .rollout import Episode


def trace_episode(tokenizer, prompt: str, segments: list[tuple[str, bool]]) -> Episode:
    episode = Episode(tokenizer(prompt, add_special_tokens=False).input_ids)
    for text, by_model in segments:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        episode.extend(ids, text, by_model, [0.0] * len(ids))
    return episode


def sft_step(model, optimizer, episodes: list[Episode], pad_id: int, micro_batch: int = 8) -> float:
    """One optimizer step of cross-entropy on the model's own tokens, averaged over those tokens."""
    device = next(model.parameters()).device
    n_tokens = max(1, sum(sum(e.loss_mask) for e in episodes))
    total = 0.0
    for start in range(0, len(episodes), micro_batch):
        batch = collate(episodes[start:start + micro_batch], pad_id, device)
        K = batch["K"]
        logp = token_logprobs(model, batch["ids"], batch["attention"], K)  # (N, K)
        loss = -(logp * batch["loss_mask"][:, -K:]).sum() / n_tokens
        loss.backward()
        total += loss.item()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total
