"""Small generated data sets for running offline: GLUE-, XNLI- and translation-style.

They exist so every benchmark runs with no network and no data folder. They are not the real
benchmarks, and every Split built from them says so (synthetic=True and the description).
Each is built from templates and word lists with a fixed seed, so a split is the same on
every machine; the train split and the evaluation split use different seeds and, where the
templates allow it, disjoint combinations. Labels follow from how the text was built, so a
small model can learn them.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
import zlib

TRAIN_SIZE, EVAL_SIZE = 400, 200
# SST-2 and QNLI have room for more distinct rows; 1000 evaluation rows keep a binomial 95%
# interval near +-3 accuracy points. (QQP's templates hold about 600 distinct duplicates.)
GLUE_SIZES = {"sst2": (1000, 1000), "qnli": (1000, 1000)}

GLUE_WHAT = {
    "sst2": "review sentences whose polarity is set by negation and by which clause of a contrast carries it",
    "qnli": "questions about a person and sentences stating two facts about two people, one of which may "
            "answer the question",
    "mnli": "premise/hypothesis pairs from templates with entailment, neutral and contradiction",
    "qqp": "question pairs that paraphrase one intent or ask different things",
}


def _rng(*parts: str) -> random.Random:
    return random.Random(zlib.crc32("/".join(parts).encode()))


def _size(split: str) -> int:
    return TRAIN_SIZE if split == "train" else EVAL_SIZE


def _text(row: dict) -> tuple:
    return tuple(v for k, v in row.items() if k not in ("label", "idx"))


def _collect(make, name: str, split: str, size: int, classes: int, exclude: frozenset = frozenset()) -> tuple:
    """`size` rows from `make(rng)` with distinct texts, none in `exclude`, labels balanced.

    Balancing by rejection keeps the classes even although some classes have fewer distinct
    texts than others (and so lose more draws to the exclusion of training rows)."""
    rng, seen, rows = _rng(name, split), set(exclude), []
    while len(rows) < size:
        row = make(rng)
        if row["label"] == len(rows) % classes and _text(row) not in seen:
            seen.add(_text(row))
            rows.append(row)
    rng.shuffle(rows)
    return tuple(rows)


@functools.lru_cache(maxsize=None)
def _glue(task: str, split: str) -> tuple:
    make, classes = _GLUE[task], 3 if task == "mnli" else 2
    n_train, n_eval = GLUE_SIZES.get(task, (TRAIN_SIZE, EVAL_SIZE))
    if split == "train":
        rows = _collect(make, task, split, n_train, classes)
    else:  # evaluation rows never repeat a training row
        rows = _collect(make, task, split, n_eval, classes, frozenset(_text(r) for r in _glue(task, "train")))
    return tuple(dict(r, idx=i) if task != "mnli" else dict(r) for i, r in enumerate(rows))


def glue(task: str, split: str) -> list[dict]:
    return [dict(r) for r in _glue(task, split)]


# --- SST-2 --------------------------------------------------------------------------------

# The label is not the majority of sentiment words: negation flips a clause, and in a contrast
# ("A but B", "although A, B", "A, although B") the main clause decides. Word polarity alone,
# which a pretrained encoder brings, gets about two thirds right; the rest must be learned.
POSITIVE = ["wonderful", "delightful", "moving", "brilliant", "charming", "funny", "gripping", "beautiful",
            "clever", "heartfelt", "superb", "engaging", "touching", "fresh", "stunning", "warm", "elegant",
            "witty", "powerful", "lovely", "thoughtful", "vivid", "memorable", "inventive", "tender", "sharp",
            "rich", "joyful", "polished", "inspiring", "graceful", "lively"]
NEGATIVE = ["boring", "dull", "awful", "clumsy", "tedious", "bland", "painful", "silly", "lifeless", "messy",
            "forgettable", "tiresome", "shallow", "annoying", "dreadful", "flat", "sloppy", "stale", "weak",
            "pointless", "cheap", "confusing", "lazy", "hollow", "predictable", "clichéd", "overlong", "muddled",
            "grating", "limp", "joyless", "crude"]
NOUNS = ["film", "movie", "story", "script", "cast", "ending", "plot", "performance", "soundtrack", "direction",
         "dialogue", "premise", "editing", "camera work", "lead actor", "humour", "pacing", "score", "set design",
         "final act"]


def _clause(rng: random.Random, polarity: int, noun: str) -> str:
    """A clause about `noun` with the given polarity, half the time by negating the opposite word."""
    if rng.random() < 0.35:
        word = rng.choice(NEGATIVE if polarity else POSITIVE)
        return f"the {noun} is {rng.choice(['not', 'never', 'hardly', 'far from'])} {word}"
    word = rng.choice(POSITIVE if polarity else NEGATIVE)
    return rng.choice([f"the {noun} is {word}", f"the {noun} feels {word}", f"a {word} {noun}"])


def _sst2(rng: random.Random) -> dict:
    label = rng.randrange(2)
    n1, n2 = rng.sample(NOUNS, 2)
    form = rng.randrange(4)
    if form == 0:  # one clause
        text = _clause(rng, label, n1)
    elif form == 1:  # "A but B": B decides
        text = f"{_clause(rng, 1 - label, n1)} , but {_clause(rng, label, n2)}"
    elif form == 2:  # "although A, B": B decides
        text = f"although {_clause(rng, 1 - label, n1)} , {_clause(rng, label, n2)}"
    else:  # "A, although B": A decides
        text = f"{_clause(rng, label, n1)} , although {_clause(rng, 1 - label, n2)}"
    text = re.sub(r"\ba ([aeiou])", r"an \1", text) + " ."  # "a engaging" -> "an engaging"
    return {"sentence": text, "label": label}


# --- QNLI -----------------------------------------------------------------------------------

PEOPLE = ["Anna", "David", "Maria", "Juma", "Amina", "Peter", "Sofia", "Omar", "Lina", "Carlos", "Mei", "Tom",
          "Fatuma", "Hassan", "Elena", "Kofi"]
FACTS = {  # attribute -> (question, sentence, values)
    "city": ("Where does {p} live?", "{p} lives in {v}.",
             ["Paris", "Nairobi", "Lima", "Oslo", "Cairo", "Hanoi", "Toronto", "Madrid"]),
    "job": ("What is {p}'s job?", "{p} works as a {v}.",
            ["teacher", "doctor", "farmer", "pilot", "baker", "nurse", "painter", "lawyer"]),
    "year": ("When was {p} born?", "{p} was born in {v}.", ["1961", "1974", "1980", "1988", "1993", "2001"]),
    "pet": ("What pet does {p} have?", "{p} has a pet {v}.", ["dog", "cat", "parrot", "rabbit", "horse", "fish"]),
    "sport": ("Which sport does {p} play?", "{p} plays {v} every weekend.",
              ["football", "tennis", "chess", "basketball", "golf", "volleyball"]),
}


def _fact(attr: str, person: str, rng: random.Random) -> str:
    return FACTS[attr][1].format(p=person, v=rng.choice(FACTS[attr][2])).rstrip(".")


def _qnli(rng: random.Random) -> dict:
    """The sentence states two facts about two people; it answers the question only when the
    asked person is bound to the asked fact. Negatives use the same names and facts, bound the
    other way round, so the words alone do not tell."""
    person, other = rng.sample(PEOPLE, 2)
    attr, other_attr = rng.sample(sorted(FACTS), 2)
    question = FACTS[attr][0].format(p=person)
    label = rng.randrange(2)
    if label == 0:  # the asked person with the asked fact, beside another person's other fact
        facts = [_fact(attr, person, rng), _fact(other_attr, other, rng)]
    else:  # the asked fact about the other person, and another fact about the asked person
        facts = [_fact(attr, other, rng), _fact(other_attr, person, rng)]
    rng.shuffle(facts)
    return {"question": question, "sentence": f"{facts[0]}, and {facts[1]}.", "label": label}


# --- MNLI and XNLI ----------------------------------------------------------------------------

# Per language: the activities ("is reading"), places ("in the park"), and the sentence frames.
NLI = {
    "en": {"acts": ["is reading", "is singing", "is writing", "is eating", "is sleeping", "is working",
                    "is dancing", "is playing"],
           "places": ["in the park", "in the kitchen", "at school", "in the library", "at the market", "at home",
                      "at the beach"],
           "premise": "{n} {a} {p}.", "is": "{n} is {p}.", "someone": "Someone {a}.", "not": "{n} is not {p}.",
           "friend": "{n} {a} with a friend.", "dog": "{n} has a dog.", "music": "{n} likes music."},
    "de": {"acts": ["liest", "singt", "schreibt", "isst", "schläft", "arbeitet", "tanzt", "spielt"],
           "places": ["im Park", "in der Küche", "in der Schule", "in der Bibliothek", "auf dem Markt", "zu Hause",
                      "am Strand"],
           "premise": "{n} {a} {p}.", "is": "{n} ist {p}.", "someone": "Jemand {a}.", "not": "{n} ist nicht {p}.",
           "friend": "{n} {a} mit einem Freund.", "dog": "{n} hat einen Hund.", "music": "{n} mag Musik."},
    "fr": {"acts": ["lit", "chante", "écrit", "mange", "dort", "travaille", "danse", "joue"],
           "places": ["dans le parc", "dans la cuisine", "à l'école", "à la bibliothèque", "au marché",
                      "à la maison", "à la plage"],
           "premise": "{n} {a} {p}.", "is": "{n} est {p}.", "someone": "Quelqu'un {a}.",
           "not": "{n} n'est pas {p}.", "friend": "{n} {a} avec un ami.", "dog": "{n} a un chien.",
           "music": "{n} aime la musique."},
    "es": {"acts": ["está leyendo", "está cantando", "está escribiendo", "está comiendo", "está durmiendo",
                    "está trabajando", "está bailando", "está jugando"],
           "places": ["en el parque", "en la cocina", "en la escuela", "en la biblioteca", "en el mercado",
                      "en casa", "en la playa"],
           "premise": "{n} {a} {p}.", "is": "{n} está {p}.", "someone": "Alguien {a}.", "not": "{n} no está {p}.",
           "friend": "{n} {a} con un amigo.", "dog": "{n} tiene un perro.", "music": "A {n} le gusta la música."},
    "sw": {"acts": ["anasoma", "anaimba", "anaandika", "anakula", "analala", "anafanya kazi", "anacheza dansi",
                    "anacheza"],
           "places": ["bustanini", "jikoni", "shuleni", "maktabani", "sokoni", "nyumbani", "ufukweni"],
           "premise": "{n} {a} {p}.", "is": "{n} yuko {p}.", "someone": "Mtu {a}.", "not": "{n} hayuko {p}.",
           "friend": "{n} {a} na rafiki.", "dog": "{n} ana mbwa.", "music": "{n} anapenda muziki."},
}
NLI_LANGS = tuple(NLI)


def _nli_row(rng: random.Random, lang: str) -> dict:
    w = NLI[lang]
    name, act, p = rng.choice(PEOPLE), rng.choice(w["acts"]), rng.randrange(len(w["places"]))
    place = w["places"][p]
    label = rng.randrange(3)
    if label == 0:
        hyp = rng.choice([w["is"].format(n=name, p=place), w["someone"].format(a=act)])
    elif label == 1:
        hyp = rng.choice([w["friend"].format(n=name, a=act), w["dog"].format(n=name), w["music"].format(n=name)])
    else:  # not there, or somewhere else at the same time
        other = w["places"][rng.choice([i for i in range(len(w["places"])) if i != p])]
        hyp = rng.choice([w["not"].format(n=name, p=place), w["is"].format(n=name, p=other)])
    return {"premise": w["premise"].format(n=name, a=act, p=place), "hypothesis": hyp[0].upper() + hyp[1:],
            "label": label}


@functools.lru_cache(maxsize=None)
def nli(lang: str, split: str, size: int | None = None) -> tuple:
    """Distinct premise/hypothesis pairs in `lang`: 0 entailment, 1 neutral, 2 contradiction."""
    return _collect(lambda rng: _nli_row(rng, lang), f"nli/{lang}", split, size or _size(split), 3)


@functools.lru_cache(maxsize=None)
def nli_split(lang: str, split: str, size: int) -> tuple:
    """XNLI-style splits: "test" as nli() makes it, and the others without any of test's pairs,
    so that few-shot training examples never reappear among the scored ones."""
    if split == "test":
        return nli(lang, "test", size)
    test = frozenset(_text(r) for r in nli(lang, "test", size))
    return _collect(lambda rng: _nli_row(rng, lang), f"nli/{lang}", split, size, 3, test)


# --- QQP ----------------------------------------------------------------------------------

TOPICS = ["python", "guitar", "spanish", "chess", "cooking", "photography", "swimming", "statistics", "drawing",
          "machine learning", "public speaking", "yoga", "piano", "gardening", "painting", "running", "french",
          "physics", "baking", "investing"]
INTENTS = [
    ["How do I learn {t}?", "What is the best way to learn {t}?", "How can I get started with {t}?"],
    ["Why is {t} so popular?", "What makes {t} popular?", "Why do so many people like {t}?"],
    ["How long does it take to get good at {t}?", "How many months are needed to become good at {t}?",
     "How much time does it take to master {t}?"],
    ["Can I earn money with {t}?", "Is it possible to make a living from {t}?", "How do people make money from {t}?"],
    ["What are good books about {t}?", "Which books should I read about {t}?", "Can you recommend books on {t}?"],
]


def _qqp(rng: random.Random) -> dict:
    intent, topic = rng.randrange(len(INTENTS)), rng.choice(TOPICS)
    q1 = rng.choice(INTENTS[intent]).format(t=topic)
    label = rng.randrange(2)
    if label == 1:  # the same intent and topic, said another way
        q2 = rng.choice([q for q in INTENTS[intent] if q.format(t=topic) != q1]).format(t=topic)
    elif rng.random() < 0.5:  # the same intent about another topic
        q2 = rng.choice(INTENTS[intent]).format(t=rng.choice([t for t in TOPICS if t != topic]))
    else:  # another intent about the same topic
        q2 = rng.choice(INTENTS[rng.choice([j for j in range(len(INTENTS)) if j != intent])]).format(t=topic)
    return {"question1": q1, "question2": q2, "label": label}


_GLUE = {"sst2": _sst2, "qnli": _qnli, "mnli": lambda rng: _nli_row(rng, "en"), "qqp": _qqp}


# --- translation ----------------------------------------------------------------------------

# Plural subjects, present-tense plural verbs and plural objects keep the grammar regular:
# German "die", French "les" throughout; Spanish and Swahili entries carry their own forms.
LEXICON = {
    "subjects": [
        {"eng_Latn": "the children", "deu_Latn": "die Kinder", "fra_Latn": "les enfants", "spa_Latn": "los niños",
         "swh_Latn": "watoto"},
        {"eng_Latn": "the women", "deu_Latn": "die Frauen", "fra_Latn": "les femmes", "spa_Latn": "las mujeres",
         "swh_Latn": "wanawake"},
        {"eng_Latn": "the men", "deu_Latn": "die Männer", "fra_Latn": "les hommes", "spa_Latn": "los hombres",
         "swh_Latn": "wanaume"},
        {"eng_Latn": "the teachers", "deu_Latn": "die Lehrer", "fra_Latn": "les enseignants",
         "spa_Latn": "los profesores", "swh_Latn": "walimu"},
        {"eng_Latn": "the farmers", "deu_Latn": "die Bauern", "fra_Latn": "les agriculteurs",
         "spa_Latn": "los agricultores", "swh_Latn": "wakulima"},
        {"eng_Latn": "the students", "deu_Latn": "die Studenten", "fra_Latn": "les étudiants",
         "spa_Latn": "los estudiantes", "swh_Latn": "wanafunzi"},
    ],
    "verbs": [
        {"eng_Latn": "see", "deu_Latn": "sehen", "fra_Latn": "voient", "spa_Latn": "ven", "swh_Latn": "wanaona"},
        {"eng_Latn": "buy", "deu_Latn": "kaufen", "fra_Latn": "achètent", "spa_Latn": "compran",
         "swh_Latn": "wananunua"},
        {"eng_Latn": "sell", "deu_Latn": "verkaufen", "fra_Latn": "vendent", "spa_Latn": "venden",
         "swh_Latn": "wanauza"},
        {"eng_Latn": "carry", "deu_Latn": "tragen", "fra_Latn": "portent", "spa_Latn": "llevan",
         "swh_Latn": "wanabeba"},
        {"eng_Latn": "want", "deu_Latn": "wollen", "fra_Latn": "veulent", "spa_Latn": "quieren",
         "swh_Latn": "wanataka"},
        {"eng_Latn": "wash", "deu_Latn": "waschen", "fra_Latn": "lavent", "spa_Latn": "lavan",
         "swh_Latn": "wanaosha"},
    ],
    "objects": [
        {"eng_Latn": "the books", "deu_Latn": "die Bücher", "fra_Latn": "les livres", "spa_Latn": "los libros",
         "swh_Latn": "vitabu"},
        {"eng_Latn": "the apples", "deu_Latn": "die Äpfel", "fra_Latn": "les pommes", "spa_Latn": "las manzanas",
         "swh_Latn": "matufaha"},
        {"eng_Latn": "the shoes", "deu_Latn": "die Schuhe", "fra_Latn": "les chaussures", "spa_Latn": "los zapatos",
         "swh_Latn": "viatu"},
        {"eng_Latn": "the chairs", "deu_Latn": "die Stühle", "fra_Latn": "les chaises", "spa_Latn": "las sillas",
         "swh_Latn": "viti"},
        {"eng_Latn": "the bags", "deu_Latn": "die Taschen", "fra_Latn": "les sacs", "spa_Latn": "las bolsas",
         "swh_Latn": "mifuko"},
        {"eng_Latn": "the cups", "deu_Latn": "die Tassen", "fra_Latn": "les tasses", "spa_Latn": "las tazas",
         "swh_Latn": "vikombe"},
        {"eng_Latn": "the clothes", "deu_Latn": "die Kleider", "fra_Latn": "les vêtements", "spa_Latn": "la ropa",
         "swh_Latn": "nguo"},
        {"eng_Latn": "the fish", "deu_Latn": "die Fische", "fra_Latn": "les poissons", "spa_Latn": "los pescados",
         "swh_Latn": "samaki"},
    ],
    "times": [
        {"eng_Latn": "today", "deu_Latn": "heute", "fra_Latn": "aujourd'hui", "spa_Latn": "hoy", "swh_Latn": "leo"},
        {"eng_Latn": "every day", "deu_Latn": "jeden Tag", "fra_Latn": "chaque jour", "spa_Latn": "cada día",
         "swh_Latn": "kila siku"},
        {"eng_Latn": "in the morning", "deu_Latn": "am Morgen", "fra_Latn": "le matin",
         "spa_Latn": "por la mañana", "swh_Latn": "asubuhi"},
        {"eng_Latn": "at the market", "deu_Latn": "auf dem Markt", "fra_Latn": "au marché",
         "spa_Latn": "en el mercado", "swh_Latn": "sokoni"},
        {"eng_Latn": "again", "deu_Latn": "wieder", "fra_Latn": "encore", "spa_Latn": "otra vez", "swh_Latn": "tena"},
    ],
}
PARALLEL_LANGS = ("eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "swh_Latn")


@functools.lru_cache(maxsize=None)
def parallel() -> dict[str, tuple]:
    """Parallel sentences in PARALLEL_LANGS as FLORES-style rows {"id", <code>: sentence, ...}.

    All 1440 subject x verb x object x time combinations are shuffled once with a fixed seed
    and cut into a "dev" part (TRAIN_SIZE) and a disjoint "devtest" part (the rest)."""
    combos = list(itertools.product(*(range(len(LEXICON[k])) for k in ("subjects", "verbs", "objects", "times"))))
    _rng("parallel").shuffle(combos)
    rows = []
    for i, (s, v, o, t) in enumerate(combos):
        row = {"id": i}
        for lang in PARALLEL_LANGS:
            words = [LEXICON["subjects"][s][lang], LEXICON["verbs"][v][lang], LEXICON["objects"][o][lang],
                     LEXICON["times"][t][lang]]
            text = " ".join(words) + "."
            row[lang] = text[0].upper() + text[1:]
        rows.append(row)
    return {"dev": tuple(rows[:TRAIN_SIZE]), "devtest": tuple(rows[TRAIN_SIZE:])}
