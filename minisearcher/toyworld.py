"""A small fictional world, so that a searching model can be trained and tested offline.

Every name in it (people, cities, companies, films, books) is made up from syllables, so no language model can know
a fact about it in advance: the only way to answer is to search the world's passages. Every question needs two
searches. Bridge: "In which city was the founder of Ruzu born?" (who founded Ruzu, then where was that person
born). Comparison: "Who was born first, A or B?" (A's birth year, then B's). `make_worlds` builds worlds that share
no name word, so a score on a held-out world measures searching, not remembering the training world.

The world is data only: passages in the schema of a Wikipedia corpus line, questions in the schema of every question
set ({"question", "answers": [...]}) with the two steps of their solution, from which `sft.sft_trace` writes a
cold-start trace.
"""
import random
import re
from dataclasses import dataclass
from typing import Callable


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


@dataclass
class World:
    passages: list[dict]   # {"id", "title", "text"}: the schema of a wiki corpus line
    questions: list[dict]  # {"question", "answers": [name], "type", "steps": [step, step], "decoys": wrong names
    #                        of the answer's kind, which sft_trace guesses from}


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
    return {"question": question.format(a["name"], b["name"]), "answers": [first["name"]], "type": "comparison",
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
    questions = [{"question": q, "answers": [answer], "type": "bridge", "steps": [hop1, hop2],
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
