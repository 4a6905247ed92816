"""Data: corpora, the BPE tokenizer, the token cache, window sampling and token pools, and the task datasets
(modular addition, synthetic sequence tasks)."""

from circuitlab.data.corpus import Corpus, Document, corpus_kwargs, load_corpus, stdlib_corpus, text_corpus
from circuitlab.data.tokens import BOS_ID, TokenData, prepare_tokens, train_tokenizer
from circuitlab.data.windows import common_token_pool, sample_windows, text_windows, token_pool

__all__ = ["BOS_ID", "Corpus", "Document", "TokenData", "common_token_pool", "corpus_kwargs", "load_corpus",
           "prepare_tokens", "sample_windows", "stdlib_corpus", "text_corpus", "text_windows", "token_pool",
           "train_tokenizer"]
