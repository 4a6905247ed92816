"""Indirect-object-identification prompts (Wang et al. 2022, 'Interpretability in the Wild', section 2 and
appendix E): "When Mary and John went to the store, John gave a drink to" -> " Mary".

- The paper's 15 templates in BABA order (S1 first: "Then, [B] and [A] ... [B] gave ... to") and ABBA order (IO
  first); each prompt ends before the indirect object, which the model must predict.
- p_IOI: a template, a place, an object and two distinct names (IO and S) from the authors' 99, each one token
  in the model's tokenizer with its leading space; names, places and objects that are not are dropped (`vocabulary` says how many remain).
- p_ABC: the same template, place and object with three distinct names in the places of IO, S1 and S2, unrelated to
  the prompt's own (the distribution the paper's mean ablations and path patching take activations from).
`positions` gives the token indices of IO, S1, S2 and END (the last token, where the answer is predicted) in
p_IOI prompts; `ioi_dataset` tokenizes both distributions into right-padded tensors (a causal model's logits at END
do not depend on the padding after it) with the answer tokens, positions and template groups.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from circuitlab.errors import CircuitlabError

# Appendix E; "[A]" is the indirect object, "[B]" the subject (its second mention is S2).
BABA_TEMPLATES = [
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to",
]


def _abba(template: str) -> str:
    """The same template with the first clause's two names swapped (IO first)."""
    i, j = template.index("[B]"), template.index("[A]")
    return template[:i] + "[A]" + template[i + 3 : j] + "[B]" + template[j + 3 :]


ABBA_TEMPLATES = [_abba(t) for t in BABA_TEMPLATES]

# The English first names of the authors' code (99; the paper says 100), its places and objects.
NAMES = [
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda", "Daniel", "David",
    "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason", "Justin", "Sarah", "William",
    "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas", "Anthony", "Heather", "Eric", "Elizabeth", "Adam",
    "Megan", "Melissa", "Kevin", "Steven", "Thomas", "Timothy", "Christina", "Kyle", "Rachel", "Laura", "Lauren",
    "Amber", "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy", "Crystal", "Michelle", "Tiffany",
    "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca", "Jacob", "Stephen", "Patrick", "Sean",
    "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin", "Paul", "Angela", "Tyler", "Scott",
    "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis", "Lisa", "Kenneth", "Bryan", "Lindsey", "Kristen",
    "Jose", "Alexander", "Jesse", "Katie", "Lindsay", "Shannon", "Vanessa", "Courtney", "Christine", "Alicia", "Cody",
    "Allison", "Bradley", "Samuel",
]
PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station"]
OBJECTS = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"]


@dataclass
class Vocabulary:
    """The names, places and objects that are single tokens (with a leading space) for one tokenizer, and how many
    of the paper's lists were dropped."""

    names: list[str]
    places: list[str]
    objects: list[str]
    dropped: dict[str, int]


def vocabulary(n_tokens: Callable[[str], int]) -> Vocabulary:
    """`n_tokens(text)`: how many tokens the tokenizer makes of `text` (no BOS)."""
    keep = lambda words: [w for w in words if n_tokens(" " + w) == 1]  # noqa: E731
    v = Vocabulary(keep(NAMES), keep(PLACES), keep(OBJECTS), {})
    v.dropped = {"names": len(NAMES) - len(v.names), "places": len(PLACES) - len(v.places),
                 "objects": len(OBJECTS) - len(v.objects)}
    if len(v.names) < 3 or not v.places or not v.objects:
        raise CircuitlabError(f"this tokenizer makes too few of the IOI names, places and objects single tokens "
                              f"({len(v.names)} names, {len(v.places)} places, {len(v.objects)} objects): IOI prompts "
                              "need three names and one place and object")
    return v


@dataclass
class IOIPrompt:
    """One prompt: its text (ending before the answer), the indirect object and subject (names without the space),
    the template's index and order ("ABBA" or "BABA"), and its place and object."""

    text: str
    io: str
    s: str
    template: int
    order: str
    place: str
    obj: str


def _fill(template: str, a: str, b: str, place: str, obj: str) -> str:
    return template.replace("[A]", a).replace("[B]", b).replace("[PLACE]", place).replace("[OBJECT]", obj)


def ioi_prompts(vocab: Vocabulary, n: int, seed: int = 0, orders: tuple[str, ...] = ("ABBA", "BABA")) -> list[IOIPrompt]:
    """n prompts from p_IOI: orders alternate; template, names, place and object drawn with `seed`."""
    if n < 1:
        raise CircuitlabError(f"the number of IOI prompts must be at least 1, not {n}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        order = orders[i % len(orders)]
        k = rng.randrange(len(BABA_TEMPLATES))
        template = (ABBA_TEMPLATES if order == "ABBA" else BABA_TEMPLATES)[k]
        io, s = rng.sample(vocab.names, 2)
        place, obj = rng.choice(vocab.places), rng.choice(vocab.objects)
        out.append(IOIPrompt(_fill(template, io, s, place, obj), io, s, k, order, place, obj))
    return out


def abc_prompts(prompts: list[IOIPrompt], vocab: Vocabulary, seed: int = 1) -> list[IOIPrompt]:
    """p_ABC for each prompt: the same template, place and object with three distinct names that are none of the
    prompt's own in the places of IO, S1 and S2 (so no name repeats: nothing to inhibit). io/s name the first two."""
    rng = random.Random(seed)
    out = []
    for p in prompts:
        a, b, c = rng.sample([x for x in vocab.names if x not in (p.io, p.s)], 3)
        template = (ABBA_TEMPLATES if p.order == "ABBA" else BABA_TEMPLATES)[p.template]
        last = template.rindex("[B]")  # S2
        text = _fill(template[:last], a, b, p.place, p.obj) + c + _fill(template[last + 3 :], a, b, p.place, p.obj)
        out.append(IOIPrompt(text, a, b, p.template, p.order, p.place, p.obj))
    return out


@dataclass
class Positions:
    """Token indices of IO, S1, S2 and END in each prompt (with `offset` tokens, e.g. a BOS, before the text)."""

    io: list[int]
    s1: list[int]
    s2: list[int]
    end: list[int]


def positions(prompts: list[IOIPrompt], encode: Callable[[str], list[int]], offset: int = 0) -> Positions:
    """Where the names are, from the tokens of the text up to each of them (`encode`: text -> token ids, no BOS)."""
    io, s1, s2, end = [], [], [], []
    for p in prompts:
        ids = encode(p.text)
        first_io, first_s = p.text.index(" " + p.io), p.text.index(" " + p.s)
        second_s = p.text.rindex(" " + p.s)
        at = lambda i: offset + len(encode(p.text[:i]))  # noqa: E731  (the name's token follows the prefix's)
        io.append(at(first_io))
        s1.append(at(first_s))
        s2.append(at(second_s))
        end.append(offset + len(ids) - 1)
    return Positions(io, s1, s2, end)


@dataclass
class IOIDataset:
    """p_IOI prompts and their p_ABC counterparts as tokens: tokens / abc_tokens [n, P] right-padded with `pad`
    (a BOS first where `bos` is given); io, s: the answer and wrong token per prompt; io_pos, s1_pos, s2_pos,
    end_pos: [n] token indices; groups: [n] template and order (2 * template + (order == "BABA")), the groups of the
    paper's per-template means."""

    prompts: list[IOIPrompt]
    abc: list[IOIPrompt]
    tokens: Tensor
    abc_tokens: Tensor
    io: Tensor
    s: Tensor
    io_pos: Tensor
    s1_pos: Tensor
    s2_pos: Tensor
    end_pos: Tensor
    groups: Tensor

    def __len__(self) -> int:
        return len(self.prompts)

    def first(self, n: int) -> "IOIDataset":
        """The first n prompts (the same padded width)."""
        return IOIDataset(self.prompts[:n], self.abc[:n], *(getattr(self, f)[:n] for f in (
            "tokens", "abc_tokens", "io", "s", "io_pos", "s1_pos", "s2_pos", "end_pos", "groups")))


def ioi_dataset(encode: Callable[[str], list[int]], vocab: Vocabulary, n: int, seed: int = 0,
                bos: int | None = None, pad: int = 0) -> IOIDataset:
    """n prompts of p_IOI (`ioi_prompts`) and p_ABC (`abc_prompts`), tokenized with `encode` (text -> ids, no
    special tokens)."""
    prompts = ioi_prompts(vocab, n, seed)
    abc = abc_prompts(prompts, vocab, seed + 1)
    pre = [bos] if bos is not None else []
    ids = [pre + encode(p.text) for p in prompts]
    abc_ids = [pre + encode(p.text) for p in abc]
    for a, b, p in zip(ids, abc_ids, prompts):
        if len(a) != len(b):
            raise CircuitlabError(f"an ABC prompt has {len(b)} tokens where its IOI prompt has {len(a)} "
                                  f"({p.text!r}): the names must be single tokens")
    P = max(map(len, ids))

    def pad_to(rows: list[list[int]]) -> Tensor:
        out = torch.full((len(rows), P), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out

    first = lambda name: encode(" " + name)[0]  # noqa: E731
    pos = positions(prompts, encode, offset=len(pre))
    t = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return IOIDataset(prompts, abc, pad_to(ids), pad_to(abc_ids), t([first(p.io) for p in prompts]),
                      t([first(p.s) for p in prompts]), t(pos.io), t(pos.s1), t(pos.s2), t(pos.end),
                      t([2 * p.template + (p.order == "BABA") for p in prompts]))
