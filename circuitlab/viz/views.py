"""What the explorer shows of one model on one text, computed once per checkpoint and packed small.

For every head (l, h) and query position q of the text:
- the attention pattern A^{l,h}[q, :], kept as its `top_keys` largest weights, quantized to 1/255;
- the head's direct logit attribution (Elhage et al. 2021, 'the direct path'; Wang et al. 2022, §3.1):
  DLA^{l,h}[q] = (z^{l,h}_q W_O^{l,h}) / s_q W_U, centred over the vocabulary, where s_q is the final LayerNorm's
  scale at q (1 without LayerNorm): its `top_logits` largest tokens, and its value on the token that follows q;
- the model's own top predictions at q and the loss of the token it should predict there.

Texts longer than the context are cut into windows (BOS first when the run trained with BOS); attention stays
inside a window, as it did in training. Everything is a pure function of (model, tokens)."""

from __future__ import annotations

import base64
import gzip
from dataclasses import dataclass, field

import numpy as np
import torch

from circuitlab.circuits.circuits import unembedding

TOP_KEYS = 8  # attention weights kept per (head, query)
TOP_LOGITS = 3  # tokens kept per (head, query) for the direct logit attribution, and for the model's prediction


@dataclass
class Text:
    """A text as the model reads it: windows [n_windows, T] of token ids (rows padded with -1), a display string per
    position of the flattened windows, and per position the target it is scored on (-1: none)."""

    windows: torch.Tensor
    strings: list[str]
    targets: list[int]
    kind: str = "language_model"
    notes: list[str] = field(default_factory=list)

    @property
    def lengths(self) -> list[int]:
        return [int((w >= 0).sum()) for w in self.windows]

    @property
    def flat_ids(self) -> list[int]:
        return [int(t) for w, n in zip(self.windows, self.lengths) for t in w[:n]]


def language_text(text: str, tokenizer, n_ctx: int, bos: int | None, max_tokens: int = 512) -> Text:
    """Tokenize `text` (a Hugging Face `tokenizers.Tokenizer`) and cut it into windows of n_ctx (BOS + n_ctx - 1
    text tokens when bos is given). Each position is shown as the exact text it covers."""
    enc = tokenizer.encode(text)
    ids, offsets = list(enc.ids), list(enc.offsets)
    notes = []
    if len(ids) > max_tokens:
        notes.append(f"the text has {len(ids):,} tokens: the first {max_tokens:,} are shown")
        ids, offsets = ids[:max_tokens], offsets[:max_tokens]
    per = n_ctx - (1 if bos is not None else 0)
    rows, strings, targets = [], [], []
    for start in range(0, max(len(ids), 1), per):
        chunk, offs = ids[start:start + per], offsets[start:start + per]
        row = ([bos] if bos is not None else []) + chunk
        words = (["⟨BOS⟩"] if bos is not None else []) + [text[a:b] or tokenizer.decode([t]) for t, (a, b) in
                                                           zip(chunk, offs)]
        rows.append(row + [-1] * (n_ctx - len(row)))
        strings += words
        targets += row[1:] + [-1]
    return Text(torch.tensor(rows), strings, targets, "language_model", notes)


def modular_text(text: str, p: int) -> Text:
    """'a b =' lines (numbers 0..p-1; the '=' may be left out) for a modular-addition run: one window per line,
    scored on (a + b) mod p at '='."""
    from circuitlab.errors import CircuitlabError

    rows, strings, targets = [], [], []
    for line in text.replace(",", "\n").splitlines():
        parts = line.replace("=", " ").replace("+", " ").split()
        if not parts:
            continue
        try:
            a, b = (int(x) for x in parts)
        except ValueError:
            raise CircuitlabError(f"{line.strip()[:40]!r} is not 'a b =': a grokking run reads lines of two numbers "
                                  f"from 0 to {p - 1}, e.g. --text '3 5 ='") from None
        if not (0 <= a < p and 0 <= b < p):
            raise CircuitlabError(f"{line.strip()[:40]!r}: the numbers must be from 0 to {p - 1} (the run is mod {p})")
        rows.append([a, b, p])
        strings += [str(a), str(b), "="]
        targets += [-1, -1, (a + b) % p]
    if not rows:
        raise CircuitlabError(f"no 'a b =' line in the text: give one or more, e.g. --text '3 5 =' (mod {p})")
    return Text(torch.tensor(rows), strings, targets, "modular_addition")


def id_dtype(d_vocab: int):
    """Token ids travel as uint16 where the vocabulary fits, else uint32."""
    return np.uint16 if d_vocab <= 1 << 16 else np.uint32


def _pack(arrays: list[np.ndarray]) -> str:
    """Little-endian arrays, each padded to 4 bytes, gzipped, base64: the page decodes them in the browser."""
    parts = []
    for a in arrays:
        b = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        parts.append(b + b"\0" * (-len(b) % 4))
    return base64.b64encode(gzip.compress(b"".join(parts), compresslevel=9, mtime=0)).decode("ascii")


@torch.no_grad()
def model_view(model, text: Text, top_keys: int = TOP_KEYS, top_logits: int = TOP_LOGITS) -> dict:
    """One checkpoint's view of the text, packed: {"blob", "scale", "n_kept", "loss_mean"}. The blob holds, for
    H = n_layers * n_heads heads (layer-major) and T positions:
      counts uint8 [H*T]; keys uint16 [N]; weights uint8 [N] (N = sum of counts; weight = w / 255);
      dla_ids uint16|32 [H*T*K]; dla_vals int8 [H*T*K]; dla_next int8 [H*T] (value = v / 127 * scale);
      pred_ids uint16|32 [T*K]; pred_probs uint8 [T*K]; loss float32 [T] (NaN where there is no target)."""
    cfg = model.cfg
    L, nh = cfg.n_layers, cfg.n_heads
    lengths = text.lengths
    T = sum(lengths)
    names = {f"blocks.{l}.attn.hook_{k}" for l in range(L) for k in ("pattern", "z")} | {"ln_final.hook_scale"}
    keys = np.zeros((L * nh, T, top_keys), np.uint16)
    weights = np.zeros((L * nh, T, top_keys), np.uint8)  # 0: not kept (topk is sorted, so the kept ones come first)
    dla_ids = np.zeros((L * nh, T, top_logits), np.int64)
    dla_vals = np.zeros((L * nh, T, top_logits), np.float32)
    dla_next = np.zeros((L * nh, T), np.float32)
    pred_ids = np.zeros((T, top_logits), np.int64)
    pred_probs = np.zeros((T, top_logits), np.float32)
    loss = np.full(T, np.nan, np.float32)
    targets = torch.tensor(text.targets)
    W_U = unembedding(model)  # centred where a final LayerNormPre centres the stream
    base = 0
    for w, n in zip(text.windows, lengths):
        ids = w[:n].unsqueeze(0).to(W_U.device)
        logits, cache = model.run_with_cache(ids, names_filter=lambda name: name in names)
        logits = logits[0].float()
        logp = logits.log_softmax(-1)
        tgt = targets[base:base + n]
        has = tgt >= 0
        loss[base:base + n][has.numpy()] = (-logp[has, tgt[has]]).cpu().numpy()
        top = logp.exp().topk(top_logits, dim=-1)
        pred_ids[base:base + n], pred_probs[base:base + n] = top.indices.cpu().numpy(), top.values.cpu().numpy()
        scale = cache["ln_final.hook_scale"][0] if "ln_final.hook_scale" in cache else None
        for l in range(L):
            pattern = cache[f"blocks.{l}.attn.hook_pattern"][0].float()  # [head, q, k]
            k = min(top_keys, n)
            tw, tk = pattern.topk(k, dim=-1)
            rows = slice(l * nh, (l + 1) * nh)
            weights[rows, base:base + n, :k] = (tw * 255).round().clamp(0, 255).to(torch.uint8).numpy()
            keys[rows, base:base + n, :k] = (tk + base).numpy()
            z = cache[f"blocks.{l}.attn.hook_z"][0].float()  # [q, head, d_head]
            out = torch.einsum("qhe,hed->hqd", z, model.W_O[l].float())
            if scale is not None:
                out = out / scale.float().unsqueeze(0)
            dla = out @ W_U.float()
            dla = dla - dla.mean(-1, keepdim=True)  # [head, q, vocab]
            t = dla.topk(top_logits, dim=-1)
            dla_ids[rows, base:base + n], dla_vals[rows, base:base + n] = t.indices.numpy(), t.values.numpy()
            nxt = tgt.clamp_min(0).to(dla.device)
            dla_next[rows, base:base + n] = torch.where(has.to(dla.device), dla.gather(
                -1, nxt.view(1, n, 1).expand(nh, n, 1)).squeeze(-1), 0).numpy()
        base += n
    scale = float(max(np.abs(dla_vals).max(initial=0), np.abs(dla_next).max(initial=0), 1e-6))
    q = lambda x: np.clip(np.round(x / scale * 127), -127, 127).astype(np.int8)  # noqa: E731
    kept = weights > 0
    counts, flat_keys, flat_w = kept.sum(-1).astype(np.uint8).reshape(-1), keys[kept], weights[kept]
    ids = id_dtype(cfg.d_vocab)
    blob = _pack([counts, flat_keys, flat_w, dla_ids.reshape(-1).astype(ids), q(dla_vals).reshape(-1),
                  q(dla_next).reshape(-1), pred_ids.reshape(-1).astype(ids),
                  np.round(pred_probs * 255).astype(np.uint8).reshape(-1), loss])
    scored = loss[~np.isnan(loss)]
    return {"blob": blob, "scale": scale, "n_kept": int(len(flat_keys)),
            "loss_mean": float(scored.mean()) if len(scored) else None,
            "vocab_ids": sorted(set(dla_ids.reshape(-1).tolist()) | set(pred_ids.reshape(-1).tolist()))}


def unpack_view(data: dict, i: int) -> dict[str, np.ndarray]:
    """The arrays of checkpoint i's blob (what the page's JavaScript reads), for tests and scripts:
    pattern [H, T, T] (the kept weights; the rest 0), dla_ids / dla_vals [H, T, K], dla_next [H, T],
    pred_ids / pred_probs [T, K], loss [T]."""
    H, T, K = data["n_layers"] * data["n_heads"], data["T"], data["top_logits"]
    ck = data["checkpoints"][i]
    raw, off = gzip.decompress(base64.b64decode(ck["blob"])), 0
    ids = np.dtype(f"<u{data['id_bytes']}")

    def take(dtype, n):
        nonlocal off
        a = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"), n, off)
        off += a.nbytes + (-a.nbytes % 4)
        return a

    counts = take(np.uint8, H * T).astype(np.int64)
    keys, weights = take(np.uint16, int(counts.sum())), take(np.uint8, int(counts.sum()))
    pattern = np.zeros((H * T, T), np.float32)
    rows = np.repeat(np.arange(H * T), counts)
    pattern[rows, keys.astype(np.int64)] = weights / 255
    scale = ck["scale"] / 127
    out = {"pattern": pattern.reshape(H, T, T), "dla_ids": take(ids, H * T * K).reshape(H, T, K)}
    out["dla_vals"] = take(np.int8, H * T * K).reshape(H, T, K) * scale
    out["dla_next"] = take(np.int8, H * T).reshape(H, T) * scale
    out["pred_ids"] = take(ids, T * K).reshape(T, K)
    out["pred_probs"] = take(np.uint8, T * K).reshape(T, K) / 255
    out["loss"] = take(np.float32, T)
    return out
