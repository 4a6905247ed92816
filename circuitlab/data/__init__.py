"""Data: corpora, the BPE tokenizer, the token cache and window sampling."""

from circuitlab.data.corpus import Corpus, Document, corpus_kwargs, load_corpus, stdlib_corpus, text_corpus
from circuitlab.data.tokens import BOS_ID, TokenData, prepare_tokens, train_tokenizer

__all__ = ["BOS_ID", "Corpus", "Document", "TokenData", "corpus_kwargs", "load_corpus", "prepare_tokens", "stdlib_corpus",
           "text_corpus", "train_tokenizer"]
