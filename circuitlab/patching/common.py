"""What every patching function shares: hook names, the logit-difference metric, typed results, and the batched
patch runner.

Every function takes a circuitlab `Transformer` or a TransformerLens `TransformerBridge` (in compatibility mode,
as `circuitlab.load_model` returns it): both are HookedRootModules with TransformerLens's hook names.

Batching: a patch is a boolean mask over one example's activation at a hook ("take this head's output from the
source run"). `run_patches` runs k patches at once: the target prompts repeated k times, copy i patched with mask i,
so patching every head of a layer is one forward pass (in chunks that bound the logits' memory), not one per head.
A mask may also be given per prompt ([k, batch, ...]: a receiver's query at each prompt's own END position).
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from circuitlab.errors import CircuitlabError
from circuitlab.results import Result

LAYER_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_SITES = ("z", "q", "k", "v", "pattern")
# logits held at once by `run_patches` (floats): 2^26 floats = 256 MiB
MAX_LOGIT_FLOATS = 2**26

Metric = Callable[[Tensor], Tensor]  # logits [batch, pos, d_vocab] -> one value per prompt [batch]


def hook_name(site: str, layer: int) -> str:
    if site in LAYER_SITES:
        return f"blocks.{layer}.hook_{site}"
    if site in HEAD_SITES:
        return f"blocks.{layer}.attn.hook_{site}"
    raise CircuitlabError(f"unknown activation site {site!r}: choose one of {', '.join(LAYER_SITES + HEAD_SITES)}")


def dims(model) -> tuple[int, int]:
    return int(model.cfg.n_layers), int(model.cfg.n_heads)


def check_pair(clean: Tensor, corrupted: Tensor) -> None:
    """Patching needs clean and corrupted prompts of the same shape (the same token positions)."""
    if clean.ndim != 2 or clean.shape != corrupted.shape:
        raise CircuitlabError(f"clean prompts {tuple(clean.shape)} and corrupted prompts {tuple(corrupted.shape)} must "
                              "have the same shape [batch, positions]: pad or choose prompts with equal token lengths")


def has_site(model, site: str, layer: int = 0) -> bool:
    return hook_name(site, layer) in model.hook_dict


def require_site(model, site: str) -> None:
    if not has_site(model, site):
        raise CircuitlabError(f"this model has no {site!r} activations (hook {hook_name(site, 0)} is missing): "
                              + ("it is attention-only" if site.startswith("mlp") else "choose another site"))


def final_ln(model) -> tuple[Tensor | None, Tensor | None, bool]:
    """(weight, bias, centres) of the final LayerNorm where it is not folded into W_U."""
    kind = getattr(model.cfg, "normalization_type", None)
    ln = getattr(model, "ln_final", None)
    w = getattr(ln, "w", None)
    b = getattr(ln, "b", None)
    if kind is None or (w is None and b is None):  # no LayerNorm, or folded (LNPre / RMSPre)
        return None, None, kind is not None and not str(kind).startswith("RMS")
    return w, b, not str(kind).startswith("RMS")


def at_positions(x: Tensor, position: int | Tensor) -> Tensor:
    """x[:, position] for one position, or x[i, position[i % len(position)]] for one position per prompt (prompts of
    different lengths, padded on the right; the batch may hold several copies of the prompts)."""
    if isinstance(position, int):
        return x[:, position]
    idx = position.to(x.device).repeat(x.shape[0] // len(position))
    return x[torch.arange(x.shape[0], device=x.device), idx]


@dataclass
class LogitDiff:
    """The metric of Wang et al. 2022: logit(answer) - logit(wrong) at `position` (default the last; or a [batch]
    tensor, one position per prompt), per prompt. answer, wrong: [batch] token ids."""

    answer: Tensor
    wrong: Tensor
    position: int | Tensor = -1

    def __call__(self, logits: Tensor) -> Tensor:
        return self.at_position(at_positions(logits, self.position))

    def at_position(self, last: Tensor) -> Tensor:
        """The metric from the logits at `position` only ([batch, d_vocab]): `run_patches` then stops the forward
        pass at the final residual stream and unembeds that one position."""
        n = last.shape[0]
        rep = n // len(self.answer)  # run_patches repeats the prompts
        a, w = self.answer.to(last.device).repeat(rep), self.wrong.to(last.device).repeat(rep)
        return last.gather(1, a[:, None])[:, 0] - last.gather(1, w[:, None])[:, 0]


@dataclass
class PatchingResult(Result):
    """The metric (mean over prompts) after each patch, laid out over `axes` (e.g. ["layer", "head"]) with `shape`;
    clean and corrupted: the metric without a patch on each run. normalized(): (patched - corrupted) / (clean -
    corrupted), 1 where a patch restores the clean metric, 0 where it changes nothing (for denoising)."""

    site: str
    method: str
    axes: list[str]
    shape: list[int]
    values: list[float]
    clean: float
    corrupted: float

    def tensor(self) -> Tensor:
        return torch.tensor(self.values).reshape(self.shape)

    def normalized(self) -> Tensor:
        gap = self.clean - self.corrupted
        if abs(gap) < 1e-9:
            raise CircuitlabError("the clean and corrupted metrics are equal: there is no effect to normalise by")
        return (self.tensor() - self.corrupted) / gap


_reused: list | None = None  # inside `reusing_clean_runs`: [(kind, model, tokens, state, key, result, versions)]


@contextlib.contextmanager
def reusing_clean_runs():
    """Inside the block, `mean_metric` and `cache_sites` give back what an identical earlier call of theirs computed
    instead of running the model again: the same model (weights unchanged, no hooks left on it), the same token
    tensor (unchanged), the same metric (a dataclass metric such as `LogitDiff` counts as the same when its fields
    are the same tensors and values) or hook names. Path patching's steps (Wang et al. 2022, appendix B) each start
    from the same clean and corrupted runs: the IOI experiment's four steps ran each of them four times. The same
    call on the same inputs gives the same bits, so nothing it returns changes. The kept activations are held until
    the block ends (the IOI quick preset on SmolLM2-135M: every layer's z for 64 + 24 prompts and their p_ABC
    twins, 232 MB in float32)."""
    global _reused
    outer, _reused = _reused, ([] if _reused is None else _reused)
    try:
        yield
    finally:
        _reused = outer


def _same(a, b) -> bool:
    """Tensors: the same object; anything else: the same type and equal (False where equality is not a bool)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return a is b
    try:
        return type(a) is type(b) and bool(a == b)
    except (RuntimeError, TypeError, ValueError):
        return a is b


def _metric_key(metric) -> tuple:
    """What makes two metric objects the same metric: a dataclass's type and fields; else the object itself."""
    if dataclasses.is_dataclass(metric) and not isinstance(metric, type):
        return (type(metric), *(getattr(metric, f.name) for f in dataclasses.fields(metric)))
    return (metric,)


def _state(model, tokens: Tensor):
    """The in-place version of every parameter and of the tokens, or None where a hook is left on one of the model's
    hook points (its output may then depend on more than these; a TransformerBridge's own wiring hooks on its
    components are part of the model)."""
    if any(hp._forward_hooks or hp._forward_pre_hooks for hp in model.hook_dict.values()):
        return None
    return tuple(p._version for p in model.parameters()) + (tokens._version,)


def _versions(result) -> tuple:
    """The in-place versions of the tensors a result holds (a caller that wrote into one makes it stale)."""
    return tuple(t._version for t in result.values()) if isinstance(result, dict) else ()


def _reuse(kind: str, model, tokens: Tensor, key: tuple, compute: Callable):
    if _reused is None:
        return compute()
    state = _state(model, tokens)
    if state is not None:
        for k, m, t, s, kk, result, v in _reused:
            if k == kind and m is model and t is tokens and s == state and len(kk) == len(key) and \
                    all(_same(a, b) for a, b in zip(kk, key)) and _versions(result) == v:
                return result
    result = compute()
    if state is not None:
        _reused.append((kind, model, tokens, state, key, result, _versions(result)))
    return result


def mean_metric(model, tokens: Tensor, metric: Metric) -> float:
    def compute():
        with torch.no_grad():
            return float(metric(model(tokens)).mean())

    return _reuse("metric", model, tokens, _metric_key(metric), compute)


def cache_sites(model, tokens: Tensor, names: list[str]) -> dict[str, Tensor]:
    """Activations at hook `names` on `tokens`, detached (a hook the forward pass does not reach is left out)."""
    def compute():
        keep = set(names)
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in keep)
        out = {}
        for n in names:
            try:
                out[n] = cache[n].detach()
            except KeyError:  # a hook the forward pass never reaches (a rotary model's hook_pos_embed)
                continue
        return out

    return dict(_reuse("sites", model, tokens, tuple(names), compute))


class Stop(Exception):
    """Raised by a hook that has read all it needs, to end the forward pass there: the read-out hook once the final
    residual stream at the metric's position is read, path patching's once the receivers' activations are kept."""


def _readout(model, position: int):
    """(hook, fn) to read the logits at one position from the final residual stream, skipping the unembedding of
    every other position: after the final LayerNorm's normalisation (then its weight and bias), or, without
    LayerNorm, the last block's output; then W_U (+ b_U)."""
    w, b, _ = final_ln(model)
    L = int(model.cfg.n_layers)
    if model.cfg.normalization_type is not None:
        name = "ln_final.hook_normalized"
    elif L > 0:
        name = f"blocks.{L - 1}.hook_resid_post"
    else:
        return None
    if name not in model.hook_dict:
        return None
    W_U = model.W_U.detach()
    b_U = getattr(model, "b_U", None)
    got: list[Tensor] = []

    def hook(x, hook):
        x = at_positions(x, position)
        if w is not None:
            x = x * w.detach()
        if b is not None:
            x = x + b.detach()
        got.append(x @ W_U + (b_U.detach() if b_U is not None else 0.0))
        raise Stop

    return name, hook, got


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit() else None


_NO_EXPAND: weakref.WeakSet = weakref.WeakSet()  # models whose forward pass cannot take a larger batch mid-way


def run_patches(model, tokens: Tensor, metric: Metric, patches: dict[str, tuple[Tensor, Tensor]],
                extra_hooks: Callable[[int], list] | None = None, expand: bool = True) -> Tensor:
    """The mean metric over the prompts for each of k patches. patches: hook name -> (source [batch, ...], masks
    [k, ...], or [k, batch, ...] for one mask per prompt): in copy i, the activation at that hook takes the source's
    values where masks[i] is True. Returns [k].
    extra_hooks(rows): more (name, fn) hooks for a chunk of `rows` copies (path patching's frozen heads).
    A metric with `at_position` (LogitDiff) is computed from the logits at its position alone (`_readout`).
    expand: the layers before the first patched one are the same in every copy, so they run once on the prompts
    and the batch is repeated k times at that layer's residual stream (circuitlab's models; a Hugging Face model
    behind a TransformerBridge builds its attention mask for the prompts' batch, so there it falls back, once per
    model, to repeating the prompts from the start)."""
    B, P = tokens.shape
    k = next(iter(patches.values()))[1].shape[0]
    readout = _readout(model, metric.position) if hasattr(metric, "at_position") else None
    per_copy = B * int(model.cfg.d_vocab) * (1 if readout else P)
    chunk = max(1, min(k, MAX_LOGIT_FLOATS // max(1, per_copy)))
    out = []
    for i in range(0, k, chunk):
        j = min(k, i + chunk)
        n = j - i

        def make(source: Tensor, masks: Tensor):
            def hook(act, hook):
                a = act.reshape(n, B, *act.shape[1:])
                m = masks[i:j].to(act.device)
                m = m[:, None] if m.ndim == a.ndim - 1 else m  # one mask per copy, or per copy and prompt
                return torch.where(m, source.to(act.dtype)[None] if source.shape[0] == B else
                                   source.reshape(n, B, *act.shape[1:]), a).reshape(act.shape)
            return hook

        hooks = [(name, make(src if src.shape[0] == B else src[i * B : j * B], m)) for name, (src, m) in patches.items()]
        if extra_hooks is not None:
            hooks += extra_hooks(n)
        layers = [_layer(name) for name, _ in hooks]
        first = min(layers) if layers and None not in layers else None
        grow = expand and n > 1 and first is not None and model not in _NO_EXPAND and \
            f"blocks.{first}.hook_resid_pre" in model.hook_dict
        try:
            values = _forward(model, tokens, n, hooks, metric, readout, first if grow else None)
        except RuntimeError:
            if not grow:
                raise
            _NO_EXPAND.add(model)
            values = _forward(model, tokens, n, hooks, metric, readout, None)
        out.append(values.reshape(n, B).mean(1).float())
    return torch.cat(out)


def _forward(model, tokens: Tensor, n: int, hooks: list, metric: Metric, readout, grow_at: int | None) -> Tensor:
    """The metric of n copies of the prompts under `hooks`; grow_at: repeat the batch at that layer's input."""
    if grow_at is None:
        batch = tokens.repeat(n, 1)
    else:
        batch = tokens
        hooks = [(f"blocks.{grow_at}.hook_resid_pre", lambda x, hook: x.repeat(n, *([1] * (x.ndim - 1))))] + hooks
    with torch.no_grad():
        if readout is None:
            try:
                return metric(model.run_with_hooks(batch, fwd_hooks=hooks))
            except Stop:  # a hook has all it needs (path patching's receivers): no metric to measure
                return torch.zeros(batch.shape[0] * (n if grow_at is not None else 1))
        name, read, got = readout
        got.clear()
        try:
            model.run_with_hooks(batch, fwd_hooks=hooks + [(name, read)])
        except Stop:
            pass
        if not got:
            raise CircuitlabError(f"the model's forward pass never reached {name}: cannot read its logits")
        return metric.at_position(got[0])
