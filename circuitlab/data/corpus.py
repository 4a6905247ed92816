"""Corpora: the embedded default (the interpreter's standard library source), a user's text files, or a Hugging
Face dataset. A corpus is an ordered list of documents; the held-out split is by document."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from circuitlab.errors import CircuitlabError

log = logging.getLogger("circuitlab")


@dataclass
class Document:
    name: str
    text: str


@dataclass
class Corpus:
    """Documents in a deterministic order, with what was skipped and a fingerprint of the sources (for caches)."""

    spec: str
    documents: list[Document]
    skipped: list[str] = field(default_factory=list)
    fingerprint: str = ""

    @property
    def id(self) -> str:
        """What identifies the corpus for reuse checks: its spec and the fingerprint of its sources."""
        return f"{self.spec}@{self.fingerprint}"

    @property
    def n_chars(self) -> int:
        return sum(len(d.text) for d in self.documents)

    def split(self, heldout_fraction: float = 0.02) -> tuple[list[Document], list[Document]]:
        """Held-out split by document: a document is held out when a hash of its name falls below the fraction,
        so the split does not depend on which other files exist. At least one document lands on each side."""
        if len(self.documents) < 2:
            raise CircuitlabError(
                f"corpus {self.spec!r} has {len(self.documents)} document(s); at least 2 are needed "
                "(one to train on, one held out): add more files"
            )

        def u(d: Document) -> float:
            return int(hashlib.sha256(d.name.encode()).hexdigest()[:8], 16) / 2**32

        ranked = sorted(self.documents, key=u)
        n_held = max(1, sum(u(d) < heldout_fraction for d in ranked))
        held = {id(d) for d in ranked[:n_held]}
        return [d for d in self.documents if id(d) not in held], [d for d in self.documents if id(d) in held]


def _fingerprint(items: list[tuple[str, int]]) -> str:
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def _read_text_file(path: Path) -> str | None:
    """The file's text, or None for a binary (NUL bytes) or non-UTF-8 file."""
    data = path.read_bytes()
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _from_files(spec: str, root: Path | None, paths: list[Path]) -> Corpus:
    docs, skipped, sizes = [], [], []
    for p in paths:
        text = _read_text_file(p)
        name = str(p.relative_to(root)) if root else str(p)
        if text is None:
            skipped.append(name)
            continue
        if text.strip():
            docs.append(Document(name, text))
            sizes.append((name, p.stat().st_size))
    return Corpus(spec, docs, skipped, _fingerprint(sizes))


def stdlib_corpus() -> Corpus:
    """The `.py` source of the running interpreter's standard library (no site-packages), sorted by path.
    Some stdlib files are deliberately not UTF-8 (encoding tests): they are skipped and counted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)
    corpus = _from_files("stdlib", root, paths)
    if corpus.skipped:
        log.info("stdlib corpus: skipped %d file(s) that are not valid UTF-8", len(corpus.skipped))
    return corpus


def _glob(pattern: str) -> list[Path]:
    """Files matching a glob, walking directories without following directory symlinks (a link loop would make
    `**` recurse forever, and a link to an ancestor would list every file many times)."""
    parts = Path(os.path.expanduser(pattern)).parts
    i = next((k for k, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root = Path(*parts[:i]) if i else Path(".")
    rest = str(Path(*parts[i:])) if i < len(parts) else ""
    if not rest:
        return [root] if root.is_file() else []
    if Path(rest).name == "**":  # glob's "DIR/**" lists files too; pathlib's lists only directories
        rest = str(Path(rest) / "*")
    try:
        found = [q for q in root.glob(rest) if q.is_file()]  # pathlib's ** does not follow directory symlinks
    except (OSError, ValueError):
        found = []
    if not found and root.is_dir():  # pathlib skips folders it cannot list: say so, not "no files match"
        try:
            os.scandir(root).close()
        except OSError as e:
            raise CircuitlabError(f"--text {pattern!r}: {root} cannot be read ({e.strerror or e}): check its "
                                  "permissions") from None
    return found


def _walk(folder: Path) -> list[Path]:
    """Every file under `folder`, not following directory symlinks. A folder that cannot be read is one line when
    nothing else could be (not "no files match"), and a warning naming it when other files were found."""
    errors: list[OSError] = []
    files = [Path(d) / f for d, _, names in os.walk(folder, onerror=errors.append) for f in names]
    files = [q for q in files if q.is_file()]
    if errors:
        e = errors[0]
        what = f"{e.filename} cannot be read ({e.strerror or e})"
        if not files:
            raise CircuitlabError(f"--text {str(folder)!r}: {what}: check its permissions")
        log.warning("skipped %d folder(s) that cannot be read, e.g. %s", len(errors), what)
    return files


def _unique(paths) -> list[Path]:
    """Each file once, whatever links lead to it (else held-out documents could leak into training)."""
    seen: dict[Path, Path] = {}
    for q in sorted(paths):
        try:
            seen.setdefault(q.resolve(), q)
        except (OSError, RuntimeError):  # a link loop: not a file
            continue
    return sorted(seen.values())


def absolute_spec(spec: str) -> str:
    """A corpus spec with a --text path or glob made absolute (from the current directory), so a run's recorded
    corpus means the same files from anywhere; other specs as they are."""
    kind, _, rest = spec.partition(":")
    return f"text:{os.path.abspath(os.path.expanduser(rest))}" if kind == "text" and rest else spec


def text_corpus(pattern: str) -> Corpus:
    """A user's text files: a file, a directory (all files under it) or a glob, recorded as an absolute path (a
    relative one is taken from the current directory). Directory symlinks are not followed and a file reached by
    several paths counts once."""
    pattern = absolute_spec(f"text:{pattern}")[len("text:"):]
    p = Path(pattern)
    if p.is_dir():
        paths = _unique(_walk(p))
    elif p.is_file():
        paths = [p]
    else:
        paths = _unique(_glob(pattern))
    if not paths:
        raise CircuitlabError(f"no files match --text {pattern!r}: give a text file, a folder or a glob such as 'docs/**/*.txt'")
    corpus = _from_files(f"text:{pattern}", None, paths)
    if not corpus.documents:
        why = f"{len(corpus.skipped)} binary or non-UTF-8 file(s) skipped" if corpus.skipped else "all files are empty"
        raise CircuitlabError(f"no usable text in --text {pattern!r} ({why}): point it at UTF-8 text files")
    if corpus.skipped:
        log.warning("skipped %d binary or non-UTF-8 file(s), e.g. %s", len(corpus.skipped), corpus.skipped[0])
    return corpus


def hf_corpus(spec: str, text_column: str = "text") -> Corpus:
    """A Hugging Face dataset, NAME[:SPLIT] (default split 'train'); NAME may be a hub name (needs network) or a
    local folder of data files. Each row's `text` is one document."""
    try:
        import datasets
    except ImportError:
        raise CircuitlabError("--hf-dataset needs the 'datasets' package: pip install 'circuitlab[hf]'") from None
    name, _, split = spec.partition(":")
    split = split or "train"
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, missing dataset, bad split: all end the same way for the user
        raise CircuitlabError(f"could not load Hugging Face dataset {name!r} split {split!r}: {str(e).splitlines()[0]}") from None
    if text_column not in ds.column_names:
        raise CircuitlabError(f"dataset {name!r} has no {text_column!r} column (columns: {ds.column_names})")
    docs = [Document(f"{name}:{split}:{i}", t) for i, t in enumerate(ds[text_column]) if t and t.strip()]
    if not docs:
        raise CircuitlabError(f"dataset {name!r} split {split!r} has no non-empty text")
    fp = _fingerprint([(name, split, getattr(ds, "_fingerprint", ""), len(docs))])  # type: ignore[list-item]
    return Corpus(f"hf:{spec}", docs, [], fp)


def corpus_kwargs(spec: str) -> dict:
    """The load_corpus arguments that rebuild a corpus from its recorded spec ('stdlib', 'text:GLOB', 'hf:NAME')."""
    kind, _, rest = spec.partition(":")
    return {"text": rest} if kind == "text" else {"hf_dataset": rest} if kind == "hf" else {}


def load_corpus(corpus: str = "stdlib", text: str | None = None, hf_dataset: str | None = None) -> Corpus:
    if text and hf_dataset:
        raise CircuitlabError("give either --text or --hf-dataset, not both")
    if text:
        return text_corpus(text)
    if hf_dataset:
        return hf_corpus(hf_dataset)
    if corpus != "stdlib":
        raise CircuitlabError(f"unknown corpus {corpus!r}: use 'stdlib', or --text PATH|GLOB, or --hf-dataset NAME[:SPLIT]")
    return stdlib_corpus()
