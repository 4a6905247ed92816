import shutil
import sysconfig
from pathlib import Path

import pytest

from circuitlab.data import prepare_tokens, text_corpus
from circuitlab.model import ModelConfig


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test uses a private token cache, never the user's ~/.cache, and no network."""
    monkeypatch.setenv("CIRCUITLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def small_corpus_dir(tmp_path_factory) -> Path:
    """~40 real Python files (about 0.5 MB) copied from the standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    d = tmp_path_factory.mktemp("small_corpus")
    for p in sorted(root.glob("*.py"))[:40]:
        shutil.copy(p, d / p.name)
    return d


@pytest.fixture(scope="session")
def tiny_data(small_corpus_dir, tmp_path_factory):
    return prepare_tokens(text_corpus(str(small_corpus_dir)), 320, cache=tmp_path_factory.mktemp("tiny_cache"))


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=32, d_vocab=320)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """A random 2-layer GPT-2 saved as `save_pretrained` writes it, with a small byte-level BPE tokenizer."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    d = tmp_path_factory.mktemp("tiny-gpt2")
    with torch.random.fork_rng():  # leave the global generator as other tests expect it
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=300, bos_token_id=0,
                                   eos_token_id=0)).save_pretrained(d)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(["When Mary and John went to the store, John gave a drink to Mary."] * 20, vocab_size=300,
                            min_frequency=1, special_tokens=["<|endoftext|>"])
    tok.save(str(d / "tokenizer.json"))
    GPT2TokenizerFast(tokenizer_file=str(d / "tokenizer.json"), bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                      unk_token="<|endoftext|>").save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_gpt2_ioi(tmp_path_factory):
    """A random 2-layer GPT-2 whose byte-level BPE tokenizer makes the IOI names, places and objects single tokens."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from circuitlab.data.ioi import BABA_TEMPLATES, NAMES, OBJECTS, PLACES

    d = tmp_path_factory.mktemp("tiny-gpt2-ioi")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=1024, bos_token_id=0,
                                   eos_token_id=0)).save_pretrained(d)
    text = [t.replace("[A]", a).replace("[B]", b).replace("[PLACE]", p).replace("[OBJECT]", o)
            for t in BABA_TEMPLATES for a, b, p, o in zip(NAMES, NAMES[1:] + NAMES[:1], PLACES * 13, OBJECTS * 13)]
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(text * 3, vocab_size=1024, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok.save(str(d / "tokenizer.json"))
    GPT2TokenizerFast(tokenizer_file=str(d / "tokenizer.json"), bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                      unk_token="<|endoftext|>").save_pretrained(d)
    return d
