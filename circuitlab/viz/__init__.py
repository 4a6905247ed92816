"""Views of a model on a text, offline: attention patterns with hover, each head's direct logit attribution, the
per-token loss, and a slider over a run's checkpoints. `circuitlab view RUN --text FILE` writes one as a page; in a
notebook, `attention(model, text)` and `explore(run, text)` render inline (no CDN, no network).

CircuitsVis is not used: its notebook output probes the network and, when it can reach it, loads its JavaScript from
a CDN (its offline bundle is 1.3 MB per output), and it has no view across checkpoints."""

from circuitlab.viz.explore import View, explore
from circuitlab.viz.lines import Lines, lines
from circuitlab.viz.views import Text


def attention(model, text, tokenizer=None, bos: int | None = None, max_tokens: int = 512) -> View:
    """`View.data["start"] = [layer, head]` picks the head shown first, `["query"]` the token (default the last).
    One model (a circuitlab model or a TransformerLens `TransformerBridge`) on `text`: a string (with `tokenizer`,
    a Hugging Face `tokenizers.Tokenizer`, or the bridge's own), a 1-D tensor or list of token ids, or a `Text`."""
    import torch

    from circuitlab.errors import CircuitlabError
    from circuitlab.viz.explore import build
    from circuitlab.viz.views import language_text

    decode = None
    if isinstance(text, Text):
        t = text
    elif isinstance(text, str):
        tok = tokenizer if tokenizer is not None else getattr(getattr(model, "tokenizer", None), "backend_tokenizer", None)
        if tok is None:
            raise CircuitlabError("a string needs a tokenizer: pass tokenizer=, or token ids")
        t = language_text(text, tok, model.cfg.n_ctx, bos, max_tokens)
        decode = lambda i: tok.decode([i])  # noqa: E731
    else:
        ids = torch.as_tensor(text).reshape(-1)[: model.cfg.n_ctx].tolist()
        names = [str(i) for i in ids]
        if tokenizer is not None:
            names = [tokenizer.decode([i]) for i in ids]
        t = Text(torch.tensor([ids]), names, ids[1:] + [-1])
    if decode is None:
        decode = (lambda i: tokenizer.decode([i])) if tokenizer is not None else str
    with torch.no_grad():
        v = build([({"step": 0, "tokens": 0, "label": "this model"}, model)], t, "attention", decode, bos, scores=False)
    v.data["query"] = v.data["T"] - 1  # start at the last token, where the next-token prediction is made
    return v


__all__ = ["Lines", "Text", "View", "attention", "explore", "lines"]
