"""A small fictional world, so that a searching model can be trained and tested offline.

Every name in it (people, cities, companies, films, books) is made up from syllables, so no language model can know
a fact about it in advance: the only way to answer is to search the world's passages. Every question needs two
searches. Bridge: "In which city was the founder of Ruzu born?" (who founded Ruzu, then where was that person
born). Comparison: "Who was born first, A or B?" (A's birth year, then B's). `make_worlds` builds worlds that share
no name word, so a score on a held-out world measures searching, not remembering the training world. `sft_trace`
writes the deliberately imperfect cold-start traces, in the exact R1-Searcher protocol.
"""
import json
import random
import re
from dataclasses import dataclass
from typing import Callable

from .prompts import ANSWER, BEGIN_QUERY, END_ANSWER, END_QUERY, END_THINK, passage_text

SYLLABLES = [onset + vowel for onset in ["b", "br", "d", "dr", "f", "k", "kr", "l", "m", "n", "p", "r", "s", "st",
                                         "t", "tr", "v", "z"] for vowel in "aeiou"]

PERSON = ("{name} is a {job} who was born in {city} in {year}. {last} grew up in {city} and later moved to {home}, "
          "where {last} still lives.")
CITY = ("{name} is a {size} city in the {part} of the country, known for its {sight}. About {people} thousand "
        "people live in {name}.")
COMPANY = ("{name} is a {kind} founded in {year} by {founder}. {name} is headquartered in {city}, has an office in "
           "{office} and employs about {staff} people.")
WORK = {"film": "{name} is a film from {year}, directed by {creator} and produced by {company}. The film tells the "
                "story of a {hero} who {plot}.",
        "book": "{name} is a novel written by {creator} and published by {company} in {year}. The book tells the "
                "story of a {hero} who {plot}."}
# (who made it, as a job, as a verb, and who brought it out: as a verb, as a kind of company)
CREDITS = {"film": ("director", "directed", "produced", "film studio"),
           "book": ("writer", "written", "published", "publishing house")}
KINDS = [credit[3] for credit in CREDITS.values()] + ["bank", "shipping company"]
JOBS = ["painter", "teacher", "doctor", "singer", "farmer"]
SIZES, PARTS = ["small", "large", "quiet", "busy"], ["north", "south", "east", "west"]
SIGHTS = ["harbour", "old bridges", "markets", "gardens", "castle", "university"]
NOUNS = ["Song", "Road", "Crown", "Garden", "Mirror", "Winter", "Letter", "Island"]
HEROES = ["young sailor", "old teacher", "lost child", "proud baker"]
PLOTS = ["searches for a missing brother", "returns home after a long war", "finds a hidden map", "builds a boat"]
SFT_STYLES = {"full": 0.2, "one": 0.35, "none": 0.45}  # the cold-start mix: mostly imperfect, on purpose


@dataclass
class World:
    passages: list[dict]   # {"id", "title", "text"}: the schema of a wiki corpus line
    questions: list[dict]  # {"question", "answer", "type", "steps": [step, step], "decoys": wrong names of the
    #                        answer's kind, which sft_trace guesses from}


def _namer(rng: random.Random) -> Callable[..., str]:
    """A source of fresh words, never the same one twice and never a word of the templates (a city called "Later"
    would match every person's passage)."""
    seen = set(re.findall(r"[a-z]+", " ".join([PERSON, CITY, COMPANY, *WORK.values(), *SIZES, *PARTS, *SIGHTS,
                                               *KINDS, *NOUNS, *HEROES, *PLOTS]).lower()))

    def word() -> str:
        for _ in range(10_000):
            w = "".join(rng.choices(SYLLABLES, k=2))  # two syllables: two tokens of world_tokenizer
            if w not in seen:
                seen.add(w)
                return w.capitalize()
        raise ValueError(f"no fresh name left after {len(seen)} words: the worlds are too big")
    return word


def _step(thought: str, query: str, finding: str) -> dict:
    return {"thought": thought, "query": query, "finding": finding}


def _born(p: dict) -> dict:
    return _step(f"I need to find where {p['name']} was born.", f"{p['name']} born",
                 f"{p['name']} was born in {p['city']}.")


def _founder(c: dict) -> dict:
    return _step(f"I need to find who founded {c['name']}.", f"{c['name']} founded",
                 f"{c['name']} was founded by {c['founder']}.")


def _headquarters(c: dict) -> dict:
    return _step(f"I need to find where {c['name']} is headquartered.", f"{c['name']} headquartered",
                 f"{c['name']} is headquartered in {c['city']}.")


def _credit(w: dict, verb: str, key: str, thought: str) -> dict:
    return _step(thought, f"{w['name']} {verb}", f"{w['name']} was {verb} by {w[key]}.")


def _bridges(companies: list[dict], works: list[dict], by_name: dict):
    """Every two-hop chain the world holds: (question, first hop, second hop, answer, what kind of name it is)."""
    for c in companies:
        p = by_name[c["founder"]]
        yield f"In which city was the founder of {c['name']} born?", _founder(c), _born(p), p["city"], "city"
    for w in works:
        p, c, (role, made, brought_out, _) = by_name[w["creator"]], by_name[w["company"]], CREDITS[w["kind"]]
        creator = _credit(w, made, "creator", f"I need to find the {role} of {w['name']}.")
        company = _credit(w, brought_out, "company", f"I need to find which company {brought_out} {w['name']}.")
        yield f"In which city was the {role} of {w['name']} born?", creator, _born(p), p["city"], "city"
        yield (f"In which city is the company that {brought_out} {w['name']} headquartered?", company,
               _headquarters(c), c["city"], "city")
        yield f"Who founded the company that {brought_out} {w['name']}?", company, _founder(c), c["founder"], "person"


def _comparison(a: dict, b: dict, verb: str, question: str) -> dict:
    """Which of two people was born first, or of two companies founded first: one search for each year."""
    first = min(a, b, key=lambda e: e["year"])
    steps = [_step(f"I need to find when {e['name']} was {verb}.", f"{e['name']} {verb}",
                   f"{e['name']} was {verb} in {e['year']}.") for e in (a, b)]
    steps[1]["finding"] += f" So {first['name']} was {verb} first."
    return {"question": question.format(a["name"], b["name"]), "answer": first["name"], "type": "comparison",
            "steps": steps, "decoys": [b["name"] if first is a else a["name"]]}


def _entities(rng: random.Random, word: Callable[..., str], n_people: int, n_cities: int, n_companies: int,
              n_works: int) -> tuple[list[dict], ...]:
    """People, cities, companies and works, each a dict of the fields its template needs; a relation holds a name.
    People share first names and surnames, and companies share cities, so that a search has near misses."""
    cities = [{"name": word(), "size": rng.choice(SIZES), "part": rng.choice(PARTS), "sight": rng.choice(SIGHTS),
               "people": rng.randint(20, 900)} for _ in range(n_cities)]
    firsts, lasts = [word() for _ in range(n_people // 3)], [word() for _ in range(n_people // 2)]
    people = []
    for first, last in rng.sample([(f, l) for f in firsts for l in lasts], n_people):
        city, home = rng.sample(cities, 2)
        people.append({"name": f"{first} {last}", "last": last, "year": rng.randint(1880, 1960),
                       "city": city["name"], "home": home["name"]})
    companies = []
    for i in range(n_companies):
        founder, (city, office) = rng.choice(people), rng.sample(cities, 2)
        companies.append({"name": word(), "kind": KINDS[i % len(KINDS)], "founder": founder["name"],
                          "year": founder["year"] + rng.randint(25, 50), "city": city["name"],
                          "office": office["name"], "staff": rng.randint(50, 5000)})
    works = []
    for i in range(n_works):
        kind, creator = ("film", "book")[i % 2], rng.choice(people)
        company = rng.choice([c for c in companies if c["kind"] == CREDITS[kind][3]])
        works.append({"name": f"The {word()} {rng.choice(NOUNS)}", "kind": kind, "creator": creator["name"],
                      "company": company["name"], "year": creator["year"] + rng.randint(20, 60),
                      "hero": rng.choice(HEROES), "plot": rng.choice(PLOTS)})
    role = {c["founder"]: "merchant" for c in companies} | {w["creator"]: CREDITS[w["kind"]][0] for w in works}
    for p in people:
        p["job"] = role.get(p["name"]) or rng.choice(JOBS)
    return people, cities, companies, works


def make_world(seed: int, n_people: int = 60, n_cities: int = 30, n_companies: int = 30, n_works: int = 40,
               word: Callable[..., str] | None = None) -> World:
    """A world's passages (one per entity), every bridge question its relations allow, and some comparisons."""
    rng = random.Random(seed)
    people, cities, companies, works = _entities(rng, word or _namer(rng), n_people, n_cities, n_companies, n_works)
    by_name = {e["name"]: e for e in people + companies}
    names = {"city": [c["name"] for c in cities], "person": [p["name"] for p in people]}
    questions = [{"question": q, "answer": answer, "type": "bridge", "steps": [hop1, hop2],
                  "decoys": rng.sample([n for n in names[kind] if n != answer], min(4, len(names[kind]) - 1))}
                 for q, hop1, hop2, answer, kind in _bridges(companies, works, by_name)]
    n_pairs = len(questions) // 8  # of each kind, so that comparisons are a fifth of the questions
    for group, verb, question in [(people, "born", "Who was born first, {} or {}?"),
                                  (companies, "founded", "Which company was founded first, {} or {}?")]:
        pairs = [(a, b) for a in group for b in group if a["year"] != b["year"]]
        questions += [_comparison(a, b, verb, question) for a, b in rng.sample(pairs, min(n_pairs, len(pairs)))]
    rng.shuffle(questions)

    entities = [(PERSON, people), (CITY, cities), (COMPANY, companies)] + [(WORK[w["kind"]], [w]) for w in works]
    texts = [(e["name"], template.format(**e)) for template, group in entities for e in group]
    return World([{"id": str(i), "title": title, "text": text} for i, (title, text) in enumerate(texts)], questions)


def make_worlds(seed: int, n: int, **sizes) -> list[World]:
    """n worlds drawn from one source of names, so no two share a name word: one to train on, one held out, ..."""
    word = _namer(random.Random(seed))
    return [make_world(seed + i, word=word, **sizes) for i in range(n)]


def study_texts(world: World) -> list[str]:
    """Each passage followed by the facts it states, in the words of the traces' findings ("Ruzu was founded by Tove
    Nuka."): reading them, a model learns to copy a name from a passage into its own sentence."""
    facts = {}
    for q in world.questions:
        for step in q["steps"]:
            facts.setdefault(step["query"].rsplit(" ", 1)[0], set()).add(step["finding"].split(" So ")[0])
    return [f" {passage_text(p)}" + "".join(f" {f}" for f in sorted(facts.get(p["title"], ()))) + "\n"
            for p in world.passages]


def _made_up_name(rng: random.Random) -> str:
    def word() -> str:
        return "".join(rng.choices(SYLLABLES, k=2)).capitalize()
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
    does not. Read in the cold start, they raised the held-out Cover-EM of a shortened demo from 0.52 to 0.58."""
    verb, years = rng.choice([("born", (1880, 1960)), ("founded", (1905, 2010))])
    a, b = _made_up_name(rng), _made_up_name(rng)
    year_a, year_b = rng.sample(range(*years), 2)
    first = a if year_a < year_b else b
    return f" {a} was {verb} in {year_a}. {b} was {verb} in {year_b}. So {first} was {verb} first.\n"


def write_jsonl(rows: list[dict], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def sft_trace(question: dict, style: str, documents: Callable[[str], str],
              rng: random.Random) -> list[tuple[str, bool]]:
    """The response after the prompt's <think>, as (text, written_by_model) segments. "full" searches both hops and
    answers from the documents; "one" searches the first hop and guesses; "none" guesses at once. A guess is a name
    of the right kind, right only by luck. `documents(query)` is the block the system injects, with its own
    surrounding newlines."""
    hops = question["steps"][:{"full": 2, "one": 1, "none": 0}[style]]
    answer = question["answer"] if style == "full" else rng.choice([question["answer"], *question["decoys"]])
    segments, said = [], ""
    for step in hops:
        segments += [(f"{said} {step['thought']} {BEGIN_QUERY} {step['query']} {END_QUERY}", True),
                     (documents(step["query"]), False)]
        said = " " + step["finding"]  # every name follows a space, so it is the same tokens wherever it stands
    guess = "" if style == "full" else f" I think the answer is {answer}."
    return segments + [(f"{said}{guess} {END_THINK}\n\n{ANSWER} {answer} {END_ANSWER}", True)]


def world_tokenizer(texts: list[str], vocab_size: int = 600):
    """A byte-level BPE trained on the world's text. Words are first cut after each vowel that a consonant follows,
    so every name splits into the syllables it was made of: a held-out world's names are then sequences of tokens
    the model has copied many times, not pieces it has never seen. The protocol tags are single tokens, and so are
    the whole instructions: a tiny model only needs to see that they are there, and episodes get 3x shorter."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .prompts import BEGIN_DOCS, END_DOCS, INSTRUCTIONS, THINK

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
    MLPs are narrow (copying is attention's work) and the initial weights wider than Qwen's 0.02: with both, copy
    exercises were learned by step 400 (from 800-1,000 with 3x-wide MLPs and 0.02), and each step is cheaper."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True, initializer_range=0.06,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return Qwen2ForCausalLM(config)
