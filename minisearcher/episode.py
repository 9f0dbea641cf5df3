"""One episode: a response as token ids, with who wrote each id, the log-probs it was sampled with, and its text.

Rollouts fill it, cold-start traces are built as one, and GRPO and SFT train on it. The ids are never re-tokenised
from the text: they are exactly what was sampled, plus each documents block tokenised on its own (token exactness).
"""
from dataclasses import dataclass, field


@dataclass
class Episode:
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)  # the response: sampled and injected ids, in order
    loss_mask: list[int] = field(default_factory=list)  # 1 where the policy sampled the id, 0 where the system wrote it
    logprobs: list[float] = field(default_factory=list)  # log pi_old of a sampled id; 0.0 on injected ids and traces
    segments: list[tuple[str, bool]] = field(default_factory=list)  # (text, written by the model?)
    queries: list[str] = field(default_factory=list)  # the searches made
    stop: str = ""  # "answer", "eos", "length" or "unopened" (an end-of-query tag with no query opened)

    @property
    def model_text(self) -> str:
        return "".join(text for text, by_model in self.segments if by_model)

    @property
    def n_searches(self) -> int:
        return len(self.queries)

    def extend(self, ids: list[int], text: str, by_model: bool, logprobs: list[float] | None = None):
        self.ids += ids
        self.loss_mask += [int(by_model)] * len(ids)
        self.logprobs += logprobs if by_model and logprobs is not None else [0.0] * len(ids)
        self.segments.append((text, by_model))
