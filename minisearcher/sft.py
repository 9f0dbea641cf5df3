"""Cold-start SFT (as in R1-Searcher++): supervised traces written in the exact protocol teach the format before RL.

A trace is a list of segments (text, written by the model?). Each segment is tokenised on its own, just as the
rollout tokenises each documents block on its own, and the documents blocks are masked out of the loss.
"""
import math
import random
from typing import Callable

from .data import read_jsonl
from .episode import Episode
from .grpo import collate, optimizer_step, token_logprobs
from .prompts import ANSWER, BEGIN_QUERY, END_ANSWER, END_QUERY, END_THINK


def load_traces(path: str) -> list[dict]:
    """Rows {"question": str, "segments": [[text, by_model], ...]}, the format --sft-data reads."""
    traces = []
    for n, row in read_jsonl(path):
        segments = row.get("segments")
        if not isinstance(row.get("question"), str) or not isinstance(segments, list) or not all(
                isinstance(s, list) and len(s) == 2 and isinstance(s[0], str) for s in segments):
            raise ValueError(f"{path}:{n}: a trace needs 'question' and 'segments': [[text, by_model], ...]")
        traces.append({"question": row["question"], "segments": [(t, bool(m)) for t, m in segments]})
    return traces


def sft_trace(question: dict, style: str, documents: Callable[[str], str],
              rng: random.Random) -> list[tuple[str, bool]]:
    """A toy-world question's trace, the response after the prompt's <think>. "full" searches both hops and answers
    from the documents; "one" searches the first hop and guesses; "none" guesses at once. A guess is a name of the
    right kind, right only by luck. `documents(query)` is the block the system injects, with its own surrounding
    newlines."""
    gold = question["answers"][0]
    hops = question["steps"][:{"full": 2, "one": 1, "none": 0}[style]]
    answer = gold if style == "full" else rng.choice([gold, *question["decoys"]])
    segments, said = [], ""
    for step in hops:
        segments += [(f"{said} {step['thought']} {BEGIN_QUERY} {step['query']} {END_QUERY}", True),
                     (documents(step["query"]), False)]
        said = " " + step["finding"]  # every name follows a space, so it is the same tokens wherever it stands
    guess = "" if style == "full" else f" I think the answer is {answer}."
    return segments + [(f"{said}{guess} {END_THINK}\n\n{ANSWER} {answer} {END_ANSWER}", True)]


def trace_episode(tokenizer, prompt: str, segments: list[tuple[str, bool]]) -> Episode:
    episode = Episode(tokenizer(prompt, add_special_tokens=False).input_ids)
    for text, by_model in segments:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        episode.extend(ids, text, by_model, [0.0] * len(ids))
    return episode


def sft_step(model, optimizer, episodes: list[Episode], pad_id: int, micro_batch: int = 8) -> float:
    """One optimizer step of cross-entropy on the model's own tokens, averaged over those tokens. Returns the loss,
    or nan when the step was skipped (a non-finite loss or gradient: the weights are left as they were)."""
    device = next(model.parameters()).device
    n_tokens = max(1, sum(sum(e.loss_mask) for e in episodes))
    total = 0.0
    for start in range(0, len(episodes), micro_batch):
        batch = collate(episodes[start:start + micro_batch], pad_id, device)
        K = batch["K"]
        mask = batch["loss_mask"][:, -K:]  # (N, K)
        logp = token_logprobs(model, batch["ids"], batch["attention"], K, mask=mask)  # (N, K), 0 where mask is 0
        loss = -logp.sum() / n_tokens
        loss.backward()
        total += loss.item()
    return total if optimizer_step(model, optimizer, 1.0, total) else math.nan
