"""Byte-level BPE tokenizer (Hugging Face `tokenizers`) and the token cache.

The encoded corpus is stored once per (corpus files and sizes, tokenizer) as `.npy` arrays that later runs open
memory-mapped, so a second run with the same inputs neither retrains the tokenizer nor re-tokenizes.
Documents are joined with the end-of-text token, which is also the BOS token put at the start of every window.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from circuitlab.data.corpus import Corpus, Document
from circuitlab.errors import CircuitlabError

log = logging.getLogger("circuitlab")

EOT = "<|endoftext|>"
BOS_ID = 0  # the first (and only) special token
MIN_VOCAB = 257  # 256 byte tokens + EOT


def cache_root() -> Path:
    return Path(os.environ.get("CIRCUITLAB_CACHE", Path.home() / ".cache" / "circuitlab"))


def _sha(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def train_tokenizer(docs: list[Document], vocab_size: int) -> Tokenizer:
    """Byte-level BPE with one special token, EOT (id 0), used as BOS and document separator."""
    if vocab_size < MIN_VOCAB:
        raise CircuitlabError(f"d_vocab {vocab_size} is too small: a byte-level BPE needs at least {MIN_VOCAB}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator((d.text for d in docs), trainer=trainer, length=len(docs))
    got = tok.get_vocab_size()
    if got < vocab_size:
        raise CircuitlabError(
            f"the corpus supports a vocabulary of only {got} tokens, not d_vocab {vocab_size}: "
            f"use --d-vocab {got} or less, or more text"
        )
    return tok


def encode(tok: Tokenizer, docs: list[Document], batch: int = 256) -> np.ndarray:
    """Concatenate documents, each followed by EOT, into one uint16/uint32 stream."""
    dtype = np.uint16 if tok.get_vocab_size() <= 2**16 else np.uint32
    parts = []
    for i in range(0, len(docs), batch):
        for enc in tok.encode_batch([d.text for d in docs[i : i + batch]], add_special_tokens=False):
            parts.append(np.asarray(enc.ids, dtype=dtype))
            parts.append(np.asarray([BOS_ID], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


@dataclass
class TokenData:
    """A tokenized corpus: the tokenizer, the train and held-out token streams (memory-mapped) and a summary."""

    tokenizer: Tokenizer
    train: np.ndarray
    val: np.ndarray
    info: dict

    @property
    def bos_id(self) -> int:
        return BOS_ID


def _atomic_dir(final: Path, write) -> None:
    """Fill a temporary sibling folder, then rename it into place: a crash never leaves a half-written cache."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp", dir=final.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same cache first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# A held-out split over 10% of the tokens (or 3x the fraction asked for) is said: with few documents, splitting by
# document can hold out far more than asked (one large file of two is half the tokens).
HELDOUT_WARN = 0.1


def prepare_tokens(corpus: Corpus, d_vocab: int, heldout_fraction: float = 0.02, cache: Path | None = None) -> TokenData:
    """Train (or reuse) the tokenizer on the training documents and encode (or reuse) both splits."""
    cache = cache or cache_root()
    train_docs, val_docs = corpus.split(heldout_fraction)
    base = dict(
        corpus=corpus.spec, corpus_id=corpus.id, documents=len(corpus.documents), skipped_files=len(corpus.skipped),
        train_documents=len(train_docs), heldout_documents=len(val_docs), heldout_fraction=heldout_fraction,
    )

    tok_dir = cache / f"tokenizer-{_sha(corpus.fingerprint, str(d_vocab), str(heldout_fraction))}"
    if not (tok_dir / "tokenizer.json").exists():
        log.info("training a %d-token byte-level BPE on %d documents", d_vocab, len(train_docs))
        tok = train_tokenizer(train_docs, d_vocab)
        # to_str + write_text, not tok.save: on a full disk that raises a bare Exception, this an OSError
        _atomic_dir(tok_dir, lambda d: (d / "tokenizer.json").write_text(tok.to_str(pretty=True)))
    tok_json = (tok_dir / "tokenizer.json").read_text()
    tok = Tokenizer.from_str(tok_json)

    tokens_dir = cache / f"tokens-{_sha(corpus.fingerprint, tok_json, str(heldout_fraction))}"
    if not (tokens_dir / "meta.json").exists():
        log.info("tokenizing %d documents (%.1f MB)", len(corpus.documents), corpus.n_chars / 1e6)

        def write(d: Path) -> None:
            np.save(d / "train.npy", encode(tok, train_docs))
            np.save(d / "val.npy", encode(tok, val_docs))
            (d / "meta.json").write_text(json.dumps(base))

        _atomic_dir(tokens_dir, write)
    train = np.load(tokens_dir / "train.npy", mmap_mode="r")
    val = np.load(tokens_dir / "val.npy", mmap_mode="r")
    info = dict(base, train_tokens=int(train.size), heldout_tokens=int(val.size), d_vocab=tok.get_vocab_size(),
                token_cache=str(tokens_dir))
    share = val.size / max(1, train.size + val.size)
    if share > max(HELDOUT_WARN, 3 * heldout_fraction):
        log.warning("%s: %.0f%% of the tokens are held out (asked for %.0f%%): the split is by document and the corpus "
                    "has %d; more, smaller files give a split closer to the fraction", corpus.spec, 100 * share,
                    100 * heldout_fraction, len(corpus.documents))
    return TokenData(tok, train, val, info)
