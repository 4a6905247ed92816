"""Synthetic tasks for the behaviours of induction-like heads (Olsson et al. 2022, 'Beyond exact copying').

Each task draws whole sequences (BOS first) plus a loss mask saying which next-token predictions count:
- `translation_task`: fuzzy copying. Two "languages" share one meaning space: word w in language 1 is token
  1 + w, its translation w* in language 2 is token 1 + n_words + w. A sequence is n random words in language 2,
  then the same words in language 1: [A*][B*] ... [A] -> [B]. No token of the second half appears earlier, so a
  head that attends from A to the token after A* matches on meaning, not identity.
- `pattern_task`: "(month|colour) (animal|fruit) : label" examples. Each sequence draws its own mapping of the
  four (first category, second category) pairs to the labels 0-3, so the label can only be read from earlier
  examples with the same pair. The loss counts the label predictions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown"]
ANIMALS = ["dog", "cat", "horse", "lion", "tiger", "mouse", "eagle", "shark", "wolf", "bear"]
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "melon"]


@dataclass
class SequenceTask:
    """A sequence generator: sample(batch, generator) -> (tokens [batch, n_ctx], loss mask [batch, n_ctx - 1],
    where mask[:, i] says whether predicting token i + 1 counts)."""

    name: str
    d_vocab: int
    n_ctx: int
    vocab: list[str] = field(default_factory=list)  # a printable name per token id

    def sample(self, batch: int, g: torch.Generator) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def settings(self) -> dict:
        """The arguments of this task's factory: what identifies the task in a run's run.json."""
        raise NotImplementedError  # pragma: no cover - abstract


@dataclass
class TranslationTask(SequenceTask):
    n_words: int = 32
    length: int = 20  # words per half
    n_fillers: int = 8  # filler tokens, placed at random before each half so positions say nothing
    max_gap: int = 8

    def sample(self, batch: int, g: torch.Generator, return_positions: bool = False):
        """Tokens: BOS, fillers, A*..., fillers, A..., fillers (to n_ctx). With return_positions, also the start
        of each half: [batch, 2]."""
        tokens = 1 + 2 * self.n_words + torch.randint(0, self.n_fillers, (batch, self.n_ctx), generator=g)
        tokens[:, 0] = 0
        gaps = torch.randint(0, self.max_gap + 1, (batch, 2), generator=g)
        starts = torch.stack([1 + gaps[:, 0], 1 + gaps[:, 0] + self.length + gaps[:, 1]], dim=1)
        mask = torch.zeros(batch, self.n_ctx - 1, dtype=torch.bool)
        for b in range(batch):
            words = torch.randperm(self.n_words, generator=g)[: self.length]
            s1, s2 = int(starts[b, 0]), int(starts[b, 1])
            tokens[b, s1 : s1 + self.length] = 1 + self.n_words + words  # language 2 (the "translations")
            tokens[b, s2 : s2 + self.length] = 1 + words  # language 1
            mask[b, s2 : s2 + self.length - 1] = True  # predicting the second half's words after its first
        return (tokens, mask, starts) if return_positions else (tokens, mask)

    def settings(self) -> dict:
        return {"n_words": self.n_words, "length": self.length, "n_fillers": self.n_fillers, "max_gap": self.max_gap}


def translation_task(n_words: int = 32, length: int = 16, n_fillers: int = 8, max_gap: int = 8) -> TranslationTask:
    vocab = (["<bos>"] + [f"w{i}" for i in range(n_words)] + [f"w{i}*" for i in range(n_words)]
             + [f"f{i}" for i in range(n_fillers)])
    n_ctx = 1 + 2 * length + 2 * max_gap
    return TranslationTask("translation", len(vocab), n_ctx, vocab, n_words, length, n_fillers, max_gap)


@dataclass
class PatternTask(SequenceTask):
    n_examples: int = 12
    first: list[list[int]] = field(default_factory=list)  # token ids of each first category (months, colours)
    second: list[list[int]] = field(default_factory=list)  # (animals, fruits)
    colon: int = 0
    newline: int = 0
    labels: list[int] = field(default_factory=list)

    EXAMPLE = 5  # w1 w2 : label \n

    def sample(self, batch: int, g: torch.Generator, return_pairs: bool = False):
        n = self.n_examples
        c1 = torch.randint(0, 2, (batch, n), generator=g)
        c2 = torch.randint(0, 2, (batch, n), generator=g)
        mapping = torch.stack([torch.randperm(4, generator=g) for _ in range(batch)])  # pair index -> label
        pair = 2 * c1 + c2
        w1, w2 = self._pick(self.first, c1, g), self._pick(self.second, c2, g)
        label = torch.tensor(self.labels)[mapping.gather(1, pair)]
        ex = torch.stack([w1, w2, torch.full_like(w1, self.colon), label, torch.full_like(w1, self.newline)], dim=2)
        tokens = torch.cat([torch.zeros(batch, 1, dtype=torch.long), ex.view(batch, -1)], dim=1)
        mask = torch.zeros(batch, tokens.shape[1] - 1, dtype=torch.bool)
        mask[:, self.colon_positions()] = True  # the prediction made at ':' is the label
        return (tokens, mask, pair) if return_pairs else (tokens, mask)

    @staticmethod
    def _pick(cats: list[list[int]], c: Tensor, g: torch.Generator) -> Tensor:
        """A uniformly drawn word of category c[i] for every i, as one draw per word (in c's order) would pick it:
        torch's CPU randint(0, n) takes one 32-bit draw r per element and returns r mod n, so one randint(0, m) with
        m a multiple of every category's size, reduced mod each size, picks the same words (tested) in one call."""
        import math

        sizes = torch.tensor([len(words) for words in cats])
        table = torch.tensor([words + [0] * (max(sizes) - len(words)) for words in cats])  # [category, word]
        r = torch.randint(0, math.lcm(*sizes.tolist()), (c.numel(),), generator=g).view(c.shape)
        return table[c, r % sizes[c]]

    def settings(self) -> dict:
        return {"n_examples": self.n_examples}

    def colon_positions(self) -> list[int]:
        return [1 + self.EXAMPLE * k + 2 for k in range(self.n_examples)]

    def example_span(self, k: int) -> range:
        return range(1 + self.EXAMPLE * k, 1 + self.EXAMPLE * (k + 1))


def pattern_task(n_examples: int = 12) -> PatternTask:
    words = ["<bos>", *MONTHS, *COLOURS, *ANIMALS, *FRUITS, ":", "\n", "0", "1", "2", "3"]
    ids = {w: i for i, w in enumerate(words)}
    group = lambda ws: [ids[w] for w in ws]  # noqa: E731
    return PatternTask("pattern", len(words), 1 + PatternTask.EXAMPLE * n_examples, words, n_examples,
                       [group(MONTHS), group(COLOURS)], [group(ANIMALS), group(FRUITS)], ids[":"], ids["\n"],
                       group(["0", "1", "2", "3"]))
