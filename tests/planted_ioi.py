"""A planted indirect-object-identification circuit (Wang et al. 2022) with hand-set weights, and a word-level
tokenizer for the paper's templates, names, places and objects.

Four layers of three heads, attention-only, shortformer positions (positions reach only Q and K). Residual stream:
  TOK  [0, V)        the current token (W_E = identity); the name movers write the copied name here (W_U reads it)
  NAME, ONE, BOS     1 for name tokens / every token / the BOS token
  PREV [R, R + V)    the previous token (written by the previous-token head)
  DUP  [D, D + V)    the token a repeated token repeats (duplicate-token and induction heads)
  INH  [I, I + V)    the duplicated name, to be inhibited (S-inhibition head)
  JUNK [J, J + V)    written by the decoys; nothing reads it
Heads (the classes of the paper, one head each, and two decoys):
  0.0 previous-token: attends to the previous position, writes its token into PREV;
  0.1 duplicate-token: attends from a token to an earlier copy of itself (else to BOS), writes it into DUP;
  0.2 decoy: a previous-token head writing into JUNK;
  1.0 induction: attends from a token to the one after its earlier copy (key: PREV), moves that PREV into DUP;
  2.0 S-inhibition: attends from END to the name with most in DUP (S2), moves DUP / 2 into INH;
  2.1 decoy: the same attention as 2.0 (END -> S2) but writes the token into JUNK;
  3.0 name mover: attends from END to names, away from the name in INH (so to IO), copies it into TOK x SCALE;
  3.1 negative name mover: the same attention, copies -NEGATIVE x the name.
On p_IOI the name movers attend to IO with weight 1 / (1 + 2 exp(-INHIBIT)) and to each S with exp(-INHIBIT) times
that: `planted_logit_diff()`. On p_ABC nothing repeats: they attend to the three names equally.
"""

from __future__ import annotations

import math

import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from circuitlab.data.ioi import ABBA_TEMPLATES, BABA_TEMPLATES, NAMES, OBJECTS, PLACES
from circuitlab.model import ModelConfig, Transformer

SCALE = 4.0  # the name mover's copy
NEGATIVE = 1.0  # the negative name mover's
INHIBIT = 4.0  # how far the inhibited name's attention score drops (nats)
SHARP = 30.0  # attention scores (before the 1/sqrt(d_head) scale, which the weights undo)


def planted_logit_diff() -> float:
    """logit(IO) - logit(S) of the planted model on p_IOI: (SCALE - NEGATIVE) (a_IO - 2 a_S)."""
    a_io = 1 / (1 + 2 * math.exp(-INHIBIT))
    return (SCALE - NEGATIVE) * (a_io - 2 * a_io * math.exp(-INHIBIT))


def word_tokenizer() -> Tokenizer:
    """Word-level tokens: [BOS], [PAD], [UNK], then every word and punctuation mark of the templates, names, places and
    objects (split on whitespace and punctuation)."""
    pre = pre_tokenizers.Whitespace()
    words: list[str] = []
    for t in BABA_TEMPLATES + ABBA_TEMPLATES:
        for w, _ in pre.pre_tokenize_str(t.replace("[A]", " ").replace("[B]", " ").replace("[PLACE]", " ")
                                         .replace("[OBJECT]", " ")):
            words.append(w)
    vocab = {}
    for w in ["[BOS]", "[PAD]", "[UNK]"] + words + NAMES + PLACES + OBJECTS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    return tok


def encoder(tok: Tokenizer):
    return lambda text: tok.encode(text, add_special_tokens=False).ids


def planted_ioi_model(tok: Tokenizer, n_ctx: int = 40) -> Transformer:
    """The planted circuit above."""
    V = tok.get_vocab_size()
    NAME, ONE, BOS = V, V + 1, V + 2
    R, D, I, J = V + 3, 2 * V + 3, 3 * V + 3, 4 * V + 3
    P = 5 * V + 3  # positions, in Q and K only
    d_model, d_head = P + n_ctx, V + n_ctx + 2
    m = Transformer(ModelConfig(n_layers=4, d_model=d_model, n_heads=3, d_head=d_head, n_ctx=n_ctx, d_vocab=V,
                                positional_embedding_type="shortformer"))
    names = [tok.token_to_id(n) for n in NAMES]
    bos = tok.token_to_id("[BOS]")
    s = math.sqrt(d_head)  # the model divides scores by sqrt(d_head)
    eye, tokens, pos = torch.eye(V), slice(0, V), slice(P, P + n_ctx)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.W_E[:, :V] = eye
        m.W_E[:, ONE] = 1.0
        m.W_E[names, NAME] = 1.0
        m.W_E[bos, BOS] = 1.0
        m.W_pos[:, pos] = torch.eye(n_ctx)
        m.W_U[:V] = eye
        a = [m.blocks[i].attn for i in range(4)]

        def previous_token(head, out: int):
            for p in range(1, n_ctx):
                a[0].W_Q[head, P + p, V + p - 1] = SHARP * s
                a[0].W_K[head, P + p - 1, V + p - 1] = 1.0
            a[0].W_V[head, tokens, :V] = eye
            a[0].W_V[head, bos] = 0.0
            a[0].W_O[head, :V, out : out + V] = eye

        def sink(attn, head):  # BOS gets half the score of a match: a query with no match attends there
            attn.W_Q[head, ONE, V + n_ctx] = SHARP * s / 2
            attn.W_K[head, BOS, V + n_ctx] = 1.0

        previous_token(0, R)
        previous_token(2, J)  # decoy
        # 0.1 duplicate-token: score = SHARP [same token] - SHARP [same position] (+ the BOS sink)
        a[0].W_Q[1, tokens, :V] = SHARP * s * eye
        a[0].W_K[1, tokens, :V] = eye
        a[0].W_Q[1, pos, V : V + n_ctx] = -SHARP * s * torch.eye(n_ctx)
        a[0].W_K[1, pos, V : V + n_ctx] = torch.eye(n_ctx)
        sink(a[0], 1)
        a[0].W_V[1, tokens, :V] = eye
        a[0].W_V[1, bos] = 0.0
        a[0].W_O[1, :V, D : D + V] = eye
        # 1.0 induction: score = SHARP [key's previous token = query's token] (+ the BOS sink); PREV -> DUP
        a[1].W_Q[0, tokens, :V] = SHARP * s * eye
        a[1].W_K[0, R : R + V, :V] = eye
        sink(a[1], 0)
        a[1].W_V[0, R : R + V, :V] = eye
        a[1].W_O[0, :V, D : D + V] = eye
        # 2.0 S-inhibition and 2.1 its decoy: score = SHARP ([key is a name] + [key has DUP])
        for h in (0, 1):
            a[2].W_Q[h, ONE, 0] = SHARP * s
            a[2].W_K[h, NAME, 0] = 1.0
            a[2].W_K[h, D : D + V, 0] = 1.0
        a[2].W_V[0, D : D + V, :V] = eye
        a[2].W_O[0, :V, I : I + V] = eye / 2  # duplicate-token and induction heads both write DUP
        a[2].W_V[1, tokens, :V] = eye
        a[2].W_O[1, :V, J : J + V] = eye
        # 3.0 name mover and 3.1 negative name mover: score = SHARP [key is a name] - INHIBIT <INH, key's token>
        for h, sign in ((0, SCALE), (1, -NEGATIVE)):
            a[3].W_Q[h, ONE, V] = SHARP * s
            a[3].W_K[h, NAME, V] = 1.0
            a[3].W_Q[h, I : I + V, :V] = -INHIBIT * s * eye
            a[3].W_K[h, tokens, :V] = eye
            a[3].W_V[h, tokens, :V] = eye
            a[3].W_O[h, :V, :V] = sign * eye
    return m
