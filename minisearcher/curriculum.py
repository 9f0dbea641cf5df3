"""The demo's cold start: a tiny Qwen2 made from random weights into a model that can follow the protocol and read.

A real run starts from a pretrained model that already reads and copies. The demo's model does not, so it is made
here, language modelling first as every LLM, in the phases of COLD_START:
1. copy: copy exercises only (names, then the same names again), where the model learns to copy what it has just
   read (an "induction head"), the skill a searcher needs most;
2. read: encyclopedia passages, each followed by the facts it states (copying names from 50 tokens back), and
   comparison exercises (which of two years comes first);
3. sft: the cold-start SFT, a full fine-tune on imperfect traces, the documents masked out of the loss.
Every few steps the passages and traces come from a new small world (names may recur between them, facts do not),
so the only way to lower the loss is to read: remembering facts does not pay. Each batch keeps copy exercises, or
a new kind of text makes the model forget how to copy. docs/DEMO.md tells how this recipe was found.
"""
import json
import math
import random
from dataclasses import dataclass
from itertools import count

import torch
from tqdm import tqdm

from . import toyworld
from .data import passage_text
from .episode import Episode
from .prompts import (ANSWER, BEGIN_DOCS, BEGIN_QUERY, END_ANSWER, END_DOCS, END_QUERY, END_THINK, INSTRUCTIONS,
                      THINK, build_prompt, documents_block)
from .retriever import BM25
from .runs import save_atomically
from .sft import sft_step, sft_trace, trace_episode


@dataclass
class Phase:
    name: str
    steps: int | None  # None: the demo's --sft-steps
    pages: int  # pages of world text (or traces, in "sft") per step
    page_tokens: int | None  # None: traces are not cut into pages
    exercises: int  # pages of copy exercises per step
    exercise_tokens: int


COLD_START = [
    # short pages: copying appears sooner than in long ones
    Phase("copy", steps=400, pages=0, page_tokens=0, exercises=64, exercise_tokens=32),
    # long exercise pages carry copying across a documents block
    Phase("read", steps=700, pages=16, page_tokens=128, exercises=16, exercise_tokens=128),
    Phase("sft", steps=None, pages=8, page_tokens=None, exercises=16, exercise_tokens=32),
]
COLD_START_WORLD = dict(n_people=60, n_cities=30, n_companies=30, n_works=40)  # a fresh one every few steps
SFT_STYLES = {"full": 0.2, "one": 0.35, "none": 0.45}  # the traces' mix (sft.sft_trace): mostly imperfect, on purpose
LR = 1e-3  # a faster rate keeps the model from ever learning to copy


def world_tokenizer(texts: list[str], vocab_size: int = 600):
    """A byte-level BPE trained on the world's text. Words are first cut after each vowel that a consonant follows,
    so every name splits into the syllables it was made of: a held-out world's names are then sequences of tokens
    the model has copied many times, not pieces it has never seen. The protocol tags are single tokens, and so are
    the whole instructions: a tiny model only needs to see that they are there, and episodes get 3x shorter."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|pad|>", BEGIN_QUERY, END_QUERY, BEGIN_DOCS, END_DOCS, THINK, END_THINK, ANSWER,
               END_ANSWER, INSTRUCTIONS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("(?<=[aeiou])(?=[b-df-hj-np-tv-z])"), behavior="removed"),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>")


def tiny_qwen(tokenizer, hidden: int = 128, layers: int = 4, seed: int = 0):
    """A randomly initialised Qwen2 of about half a million parameters: small enough to train on a laptop CPU. The
    MLPs are narrow (copying is attention's work, and each step is cheaper) and the initial weights wider than
    Qwen's 0.02: with both, copying is learned in a few hundred steps."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True, initializer_range=0.06,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return Qwen2ForCausalLM(config)


def memorise(model, tokenizer, episodes: list[Episode], max_steps: int = 150, lr: float = 1e-2,
             until: float = 0.05) -> list[float]:
    """Fine-tune `model` on a few traces until their loss is below `until`: a tiny model that then replays them
    greedily, really pausing, searching and resuming, for tests, notebooks and benchmarks. Returns the losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    while len(losses) < max_steps and (not losses or losses[-1] >= until):
        losses.append(sft_step(model, optimizer, episodes, tokenizer.pad_token_id))
    return losses


def study_texts(world: toyworld.World) -> list[str]:
    """Each passage followed by the facts it states, in the words of the traces' findings ("Ruzu was founded by Tove
    Nuka."): reading them, a model learns to copy a name from a passage into its own sentence."""
    facts = {}
    for q in world.questions:
        for step in q["steps"]:
            facts.setdefault(step["query"].rsplit(" ", 1)[0], set()).add(step["finding"].split(" So ")[0])
    return [f" {passage_text(p)}" + "".join(f" {f}" for f in sorted(facts.get(p["title"], ()))) + "\n"
            for p in world.passages]


def _made_up_name(rng: random.Random) -> str:
    """One or two syllable words: unlike toyworld's names, these may repeat (an exercise needs no fresh names)."""
    def word() -> str:
        return "".join(rng.choices(toyworld.SYLLABLES, k=2)).capitalize()
    return word() + (f" {word()}" if rng.random() < 0.4 else "")  # a person's name too


def copy_exercise(rng: random.Random) -> str:
    """A few made-up names, then the same names again: from the second "." on, every name can be copied from before.
    A model trained from random weights needs text like this to learn, within minutes, to copy what it has just read
    (an "induction head"); from passages alone it does not. A pretrained LLM learned it long ago."""
    names = [_made_up_name(rng) for _ in range(rng.randint(3, 6))]
    return f" {', '.join(names)}. {', '.join(names)}.\n"


def compare_exercise(rng: random.Random) -> str:
    """Two made-up years and which came first, in the words of a comparison's finding: "Brupa was founded in 1931.
    Sodi was founded in 1917. So Sodi was founded first." Another skill a pretrained LLM brings and a random model
    does not."""
    verb, years = rng.choice([("born", (1880, 1960)), ("founded", (1905, 2010))])
    a, b = _made_up_name(rng), _made_up_name(rng)
    year_a, year_b = rng.sample(range(*years), 2)
    first = a if year_a < year_b else b
    return f" {a} was {verb} in {year_a}. {b} was {verb} in {year_b}. So {first} was {verb} first.\n"


def page(tokenizer, ids: list[int]) -> Episode:
    """A page of text as an episode whose every token but the first (its prompt) is the model's: language modelling
    is then the same sft_step as the traces."""
    episode = Episode(ids[:1])
    episode.extend(ids[1:], tokenizer.decode(ids[1:]), True)
    return episode


def pages(tokenizer, texts: list[str], length: int = 128) -> list[Episode]:
    """The texts packed into pages of `length` tokens, the last, partial one left out."""
    ids = [token for text in texts for token in tokenizer(text).input_ids]
    return [page(tokenizer, ids[start:start + length]) for start in range(0, len(ids) - length + 1, length)]


def copy_page(tokenizer, rng: random.Random, length: int) -> Episode:
    """Copy exercises cut at `length` tokens, the first one starting the page: packed like passages, a page would
    often begin with the second half of one, with nothing to copy from."""
    ids = []
    while len(ids) < length:
        ids += tokenizer(copy_exercise(rng)).input_ids
    return page(tokenizer, ids[:length])


def warmup(optimizer, cosine_over: int | None = None):
    """30 steps of warm-up, then a cosine down to a tenth of the learning rate at step `cosine_over`, or a constant
    rate: reading keeps it, as copying needs many steps at full rate to appear."""
    def scale(step):
        return min(1.0, (step + 1) / 30) * (0.55 + 0.45 * math.cos(math.pi * step / cosine_over) if cosine_over else 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, scale)


def cold_start(folder: str, log: str, seed: int, sft_steps: int, top_k: int, doc_tokens: int,
               phases: list[Phase] | None = None):
    """Make the demo's model from random weights in the phases of COLD_START (or `phases`) and save it, with its
    tokenizer, in `folder`. Each step's loss goes to the JSON-lines file `log`. The traces' documents are BM25's
    top_k, each cut to doc_tokens, as the rollouts will inject them."""
    rng = random.Random(seed)
    worlds = (toyworld.make_world(s, **COLD_START_WORLD) for s in count(seed + 1000))
    first = [next(worlds) for _ in range(10)]
    tokenizer = world_tokenizer([p["text"] for w in first for p in w.passages] +
                                [q["question"] for w in first for q in w.questions])

    def passages(world, length):  # and as many copy and comparison exercises, in between
        exercises = [make(rng) for make in (copy_exercise, compare_exercise) for _ in world.passages]
        texts = study_texts(world) + exercises
        return pages(tokenizer, rng.sample(texts, len(texts)), length)

    def traces(world):
        retriever = BM25(world.passages)
        return [trace_episode(tokenizer, build_prompt(tokenizer, q["question"], chat=False), sft_trace(
            q, rng.choices(list(SFT_STYLES), weights=SFT_STYLES.values())[0],
            lambda query: documents_block(retriever.search([query], top_k)[0], tokenizer, doc_tokens), rng))
            for q in world.questions]

    model = tiny_qwen(tokenizer, seed=seed)
    model.train()
    for phase in phases or COLD_START:
        steps = phase.steps or sft_steps
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
        schedule = warmup(optimizer, cosine_over=steps if phase.name == "sft" else None)
        pool = []
        for step in (bar := tqdm(range(steps), desc=phase.name)):
            if len(pool) < phase.pages:
                pool = traces(next(worlds)) if phase.name == "sft" else passages(next(worlds), phase.page_tokens)
                rng.shuffle(pool)
            exercises = [copy_page(tokenizer, rng, phase.exercise_tokens) for _ in range(phase.exercises)]
            batch, pool = pool[:phase.pages] + exercises, pool[phase.pages:]
            loss = sft_step(model, optimizer, batch, tokenizer.pad_token_id,
                            micro_batch=phase.pages or phase.exercises)
            schedule.step()
            bar.set_postfix(loss=f"{loss:.3f}")
            with open(log, "a") as f:
                f.write(json.dumps({"phase": phase.name, "step": step, "loss": loss}) + "\n")
    save_atomically(lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)), folder)
