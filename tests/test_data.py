import json
from pathlib import Path

import numpy as np
import pytest

import circuitlab.data.tokens as tokens_mod
from circuitlab.data import BOS_ID, load_corpus, prepare_tokens, stdlib_corpus, text_corpus, train_tokenizer
from circuitlab.errors import CircuitlabError


def test_stdlib_corpus_is_deterministic_and_skips_non_utf8():
    a, b = stdlib_corpus(), stdlib_corpus()
    assert [d.name for d in a.documents] == [d.name for d in b.documents]
    assert [d.name for d in a.documents] == sorted(d.name for d in a.documents)
    assert len(a.documents) > 500 and a.n_chars > 5_000_000
    assert all(n.endswith(".py") and "site-packages" not in n for n in a.skipped + [d.name for d in a.documents])
    assert a.fingerprint == b.fingerprint


def test_text_corpus_skips_binary_and_non_utf8(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n" * 5)
    (tmp_path / "b.txt").write_text("second document\n" * 5)
    (tmp_path / "img.bin").write_bytes(b"\x89PNG\x00\x01\x02")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    c = text_corpus(str(tmp_path))
    assert [d.name for d in c.documents] == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    assert sorted(c.skipped) == sorted([str(tmp_path / "img.bin"), str(tmp_path / "latin1.txt")])
    assert len(text_corpus(str(tmp_path / "*.txt")).documents) == 2  # glob


def test_bad_corpora_give_clear_errors(tmp_path):
    with pytest.raises(CircuitlabError, match="no files match"):
        text_corpus(str(tmp_path / "nothing-here"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CircuitlabError, match="all files are empty"):
        text_corpus(str(tmp_path))
    (tmp_path / "blob.bin").write_bytes(b"\x00\xff" * 10)
    with pytest.raises(CircuitlabError, match="binary or non-UTF-8"):
        text_corpus(str(tmp_path / "blob.bin"))
    with pytest.raises(CircuitlabError, match="unknown corpus"):
        load_corpus("wikipedia")
    one = tmp_path / "one"
    one.mkdir()
    (one / "only.txt").write_text("just one document")
    with pytest.raises(CircuitlabError, match="at least 2"):
        text_corpus(str(one)).split()


def test_heldout_split_is_by_document_and_stable(small_corpus_dir):
    c = text_corpus(str(small_corpus_dir))
    train, held = c.split(0.1)
    assert held and train
    assert not {d.name for d in train} & {d.name for d in held}
    assert len(train) + len(held) == len(c.documents)
    # adding a document does not move the others between splits
    c2 = text_corpus(str(small_corpus_dir))
    c2.documents.append(type(c.documents[0])("zzz-new.py", "x = 1\n"))
    assert {d.name for d in held} <= {d.name for d in c2.split(0.1)[1]} | {"zzz-new.py"}


def test_tokenizer_round_trips_and_reserves_bos(small_corpus_dir):
    docs = text_corpus(str(small_corpus_dir)).documents
    tok = train_tokenizer(docs, 400)
    assert tok.get_vocab_size() == 400
    assert tok.token_to_id("<|endoftext|>") == BOS_ID
    text = docs[0].text[:2000] + "\n\u00e9\u4e2d\U0001f600 unseen bytes"
    assert tok.decode(tok.encode(text).ids) == text


def test_vocab_larger_than_corpus_supports(tmp_path):
    (tmp_path / "a.txt").write_text("ab ab ab ab")
    (tmp_path / "b.txt").write_text("cd cd cd cd")
    with pytest.raises(CircuitlabError, match="supports a vocabulary of only"):
        prepare_tokens(text_corpus(str(tmp_path)), 5000, cache=tmp_path / "cache")
    with pytest.raises(CircuitlabError, match="too small"):
        prepare_tokens(text_corpus(str(tmp_path)), 100, cache=tmp_path / "cache")


def test_token_cache_is_reused_not_recomputed(small_corpus_dir, tmp_path, monkeypatch):
    corpus = text_corpus(str(small_corpus_dir))
    first = prepare_tokens(corpus, 320, cache=tmp_path)
    assert isinstance(first.train, np.memmap)
    assert first.info["train_tokens"] > 50_000 and first.info["heldout_tokens"] > 0
    assert first.train[-1] == BOS_ID  # documents end with the end-of-text token

    def fail(*a, **k):
        raise AssertionError("re-tokenized although the cache was warm")

    monkeypatch.setattr(tokens_mod, "encode", fail)
    monkeypatch.setattr(tokens_mod, "train_tokenizer", fail)
    second = prepare_tokens(text_corpus(str(small_corpus_dir)), 320, cache=tmp_path)
    assert np.array_equal(first.train, second.train) and np.array_equal(first.val, second.val)
    # a changed file changes the key: the cache is not reused for different inputs
    (small_corpus_dir / "zz_extra.py").write_text("print('new file')\n" * 50)
    try:
        with pytest.raises(AssertionError, match="re-tokenized"):
            prepare_tokens(text_corpus(str(small_corpus_dir)), 320, cache=tmp_path)
    finally:
        (small_corpus_dir / "zz_extra.py").unlink()


def test_hf_dataset_from_local_files_offline(tmp_path):
    pytest.importorskip("datasets")
    d = tmp_path / "mydata"
    d.mkdir()
    rows = [{"text": f"document number {i} " * 20} for i in range(30)]
    (d / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    c = load_corpus(hf_dataset=f"{d}:train")
    assert len(c.documents) == 30 and c.documents[3].text == rows[3]["text"]
    with pytest.raises(CircuitlabError, match="could not load"):
        load_corpus(hf_dataset=f"{tmp_path / 'missing'}:train")


def test_text_globs_do_not_follow_symlink_loops_or_count_a_file_twice(tmp_path):
    import signal

    from circuitlab.data import text_corpus

    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("alpha " * 50)
    (d / "sub" / "b.txt").write_text("beta " * 50)
    (d / "self").symlink_to(d, target_is_directory=True)  # a link to an ancestor: a loop
    (d / "sub" / "up").symlink_to(d, target_is_directory=True)
    (d / "again.txt").symlink_to(d / "a.txt")  # the same file under another name
    signal.alarm(20)  # a hang fails the test instead of the suite
    try:
        for spec in (str(d), str(d / "**" / "*.txt"), str(d) + "/**"):
            docs = text_corpus(spec).documents
            assert len(docs) == 2, (spec, [x.name for x in docs])
    finally:
        signal.alarm(0)


def test_ioi_prompts_follow_the_papers_templates_and_corruption():
    import pytest

    from circuitlab.data.ioi import (
        ABBA_TEMPLATES, BABA_TEMPLATES, NAMES, abc_prompts, ioi_prompts, positions, vocabulary,
    )
    from circuitlab.errors import CircuitlabError

    assert len(BABA_TEMPLATES) == len(ABBA_TEMPLATES) == 15 and len(NAMES) == 99 == len(set(NAMES))
    assert ABBA_TEMPLATES[0] == "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to"
    # a word-level tokenizer where names with more than 6 letters take two tokens
    n_tokens = lambda text: len(text.split()) + sum(len(w) > 6 for w in text.split())  # noqa: E731
    v = vocabulary(n_tokens)
    assert all(len(x) <= 6 for x in v.names) and v.dropped["names"] == 99 - len(v.names) > 0
    prompts = ioi_prompts(v, 40, seed=3)
    assert prompts == ioi_prompts(v, 40, seed=3) and prompts != ioi_prompts(v, 40, seed=4)
    assert {p.order for p in prompts} == {"ABBA", "BABA"} and len({p.template for p in prompts}) > 5
    for p in prompts:
        words = p.text.replace(",", " ,").replace(".", " .").split()
        assert words.count(p.s) == 2 and words.count(p.io) == 1 and p.io != p.s and p.text.endswith(" to")
        first = words.index(p.io) < words.index(p.s)
        assert first == (p.order == "ABBA")
    encode = lambda text: text.split(" ")  # noqa: E731
    pos = positions(prompts, encode, offset=1)
    for p, io, s1, s2, end in zip(prompts, pos.io, pos.s1, pos.s2, pos.end):
        ids = ["<bos>", *encode(p.text)]
        assert ids[io].strip(",.") == p.io and ids[s1].strip(",.") == p.s == ids[s2].strip(",.") and s1 < s2
        assert end == len(ids) - 1 and ids[end] == "to"
    abc = abc_prompts(prompts, v)
    for p, q in zip(prompts, abc):
        names = [w.strip(",.") for w in q.text.split() if w.strip(",.") in v.names]
        assert len(names) == len(set(names)) == 3 and not set(names) & {p.io, p.s}  # three fresh names, none repeated
        assert len(encode(q.text)) == len(encode(p.text)) and q.template == p.template
    with pytest.raises(CircuitlabError, match="too few"):
        vocabulary(lambda text: 2)


def test_a_split_that_holds_out_far_more_than_asked_is_said(tmp_path, caplog):
    """Issue 15, item 11: split by document, two equal files hold out half the tokens (asked: 2%)."""
    import logging

    from circuitlab.data import prepare_tokens, text_corpus

    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(" ".join(f"w{i % 50}" for i in range(4000)))
    with caplog.at_level(logging.WARNING):
        data = prepare_tokens(text_corpus(str(tmp_path)), 280, 0.02, cache=tmp_path / "cache")
    assert data.info["heldout_tokens"] > 0.3 * (data.info["train_tokens"] + data.info["heldout_tokens"])
    assert any("of the tokens are held out (asked for 2%)" in r.getMessage() for r in caplog.records)


def test_an_unreadable_folder_is_named_not_reported_as_no_files(tmp_path, monkeypatch, caplog):
    """(As root every folder is readable, so the refusal is simulated where the walk lists a folder.)"""
    import os

    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "a.txt").write_text("hidden text\n")
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "b.txt").write_text("some text here\n")
    real = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(CircuitlabError, match=r"locked cannot be read \(Permission denied\): check its permissions"):
        text_corpus(str(tmp_path / "locked"))
    with pytest.raises(CircuitlabError, match=r"locked cannot be read \(Permission denied\): check its permissions"):
        text_corpus(str(tmp_path / "locked" / "*.txt"))  # a glob under it, too
    with caplog.at_level("WARNING", logger="circuitlab"):
        c = text_corpus(str(tmp_path))  # the readable part is used, the locked folder named
    assert [d.text for d in c.documents] == ["some text here\n"]
    assert "skipped 1 folder(s) that cannot be read" in caplog.text and "locked" in caplog.text
