"""soap_lab.train.data and data/prepare.py: R decoder, shipped corpora, tokenizers, splits, any text as a corpus."""
import gzip
import hashlib
import importlib.util
import json
import re
import struct
import zlib
from pathlib import Path

import pytest
import torch

from soap_lab.train import data as D

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def prepare():
    spec = importlib.util.spec_from_file_location("soap_lab_prepare", REPO / "data" / "prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- a tiny R XDR serializer, written independently of the decoder, for round trips -----------------

def _i(v):
    return struct.pack(">i", v)


def r_charsxp(s):
    if s is None:
        return _i(9) + _i(-1)  # NA_character_
    b = s.encode("utf-8")
    levels = 64 if s.isascii() else 8  # ASCII_MASK / UTF8_MASK
    return _i(9 | (levels << 12)) + _i(len(b)) + b


def r_strsxp(values, attrs=b""):
    return _i(16 | ((1 << 9) if attrs else 0)) + _i(len(values)) + b"".join(map(r_charsxp, values)) + attrs


def r_intsxp(values):
    return _i(13) + _i(len(values)) + b"".join(_i(-(2**31) if v is None else v) for v in values)


class _Syms:
    """Symbols: first use writes SYMSXP + name (and enters the reference table), later uses a REFSXP."""

    def __init__(self):
        self.table = []

    def __call__(self, name):
        if name in self.table:
            return _i(((self.table.index(name) + 1) << 8) | 255)
        self.table.append(name)
        return _i(1) + r_charsxp(name)


def r_names_attr(syms, names):
    # pairlist node with a tag: LISTSXP | has_tag, tag, car, then the end of the list
    return _i(2 | (1 << 10)) + syms("names") + r_strsxp(names) + _i(254)


def r_named_list(syms, items: dict):
    body = b"".join(items.values())
    return _i(19 | (1 << 9)) + _i(len(items)) + body + r_names_attr(syms, list(items))


def r_serialize(obj_bytes, version=3):
    head = b"X\n" + _i(version) + _i(0x040201) + _i(0x030500)
    if version == 3:
        head += _i(5) + b"UTF-8"
    return head + obj_bytes


def test_r_decoder_character_vector_round_trip(prepare):
    values = ["PRIDE AND PREJUDICE", "", None, "naïve café — £5", "It is a truth universally acknowledged"]
    for version in (2, 3):
        obj = prepare.r_unserialize(r_serialize(r_strsxp(values), version))
        assert obj.rtype == 16 and obj.value == values
    # gzip-wrapped (as saveRDS writes) decodes the same
    obj = prepare.r_unserialize(gzip.compress(r_serialize(r_strsxp(values))))
    assert obj.value == values


def test_r_decoder_named_list_ints_and_references(prepare):
    syms = _Syms()
    inner = r_named_list(syms, {"a": r_intsxp([0, 10]), "b": r_intsxp([10, None])})
    outer = r_named_list(syms, {"variables": inner, "compressed": _i(10) + _i(1) + _i(1)})
    assert syms.table == ["names"]  # the second "names" was written as a reference
    obj = prepare.r_unserialize(r_serialize(outer))
    d = obj.as_dict()
    assert d["compressed"].value == [True]
    assert {k: v.value for k, v in d["variables"].as_dict().items()} == {"a": [0, 10], "b": [10, None]}


def test_r_decoder_rejects_garbage(prepare):
    with pytest.raises(prepare.RDecodeError):
        prepare.r_unserialize(b"A\n" + b"\0" * 20)
    with pytest.raises(prepare.RDecodeError):
        prepare.r_unserialize(r_serialize(r_strsxp(["abc"]))[:-2])  # truncated


def test_lazyload_db_round_trip(prepare, tmp_path):
    novels = {"emma": ["EMMA", "", "By Jane Austen"], "persuasion": ["Persuasion", None, "Chapter 1"]}
    rdb, offsets = b"", {}
    for name, lines in novels.items():
        ser = r_serialize(r_strsxp(lines))
        rec = struct.pack(">I", len(ser)) + zlib.compress(ser)
        offsets[name] = (len(rdb), len(rec))
        rdb += rec
    syms = _Syms()
    variables = r_named_list(syms, {k: r_intsxp(list(v)) for k, v in offsets.items()})
    index = r_named_list(syms, {"variables": variables, "references": _i(19) + _i(0),
                                "compressed": _i(10) + _i(1) + _i(1)})
    (tmp_path / "Rdata.rdb").write_bytes(rdb)
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(r_serialize(index)))
    out = prepare.read_lazyload_db(tmp_path / "Rdata.rdx", tmp_path / "Rdata.rdb")
    assert {k: v.value for k, v in out.items()} == novels


def test_markdown_play_to_text(prepare):
    md = ("# Hamlet\n\n## ACT III\n\n### SCENE I. A room in the castle.\n\n_Enter HAMLET_\n\n"
          "**HAMLET**  \nTo be, or not to be: that is the question:  \nWhether 'tis nobler\n\n"
          "_\\[Aside]_  \nSoft you now!\n\n\n_Exeunt KING CLAUDIUS,\nand POLONIUS_\n")
    assert prepare.markdown_play_to_text(md) == (
        "Hamlet\n\nACT III\n\nSCENE I. A room in the castle.\n\nEnter HAMLET\n\n"
        "HAMLET:\nTo be, or not to be: that is the question:\nWhether 'tis nobler\n\n"
        "[Aside]\nSoft you now!\n\nExeunt KING CLAUDIUS,\nand POLONIUS")


# --- shipped corpora --------------------------------------------------------------------------------

@pytest.mark.parametrize("corpus", D.CORPORA)
def test_shipped_checksums_match_constants_and_readme(corpus):
    src = D.SOURCES[corpus]
    path = D.DATA_DIR / src["file"]
    raw = path.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == src["sha256"]
    assert len(raw) < 4.5 * 2**20  # well under 5 MiB
    readme = (path.parent / "README.md").read_text()
    assert src["sha256"] in readme
    assert src["source"]["sha256"] in readme
    assert src["source"]["version"] in readme


def test_shipped_corpora_content():
    austen = D.load_text("austen")
    assert len(austen) > 3_000_000
    for s in ("Elizabeth Bennet", "It is a truth universally acknowledged", "Emma Woodhouse, handsome",
              "Anne Elliot", "Fanny Price", "Catherine Morland", "Marianne"):
        assert s in austen, s
    # publication order
    titles = ["SENSE AND SENSIBILITY", "PRIDE AND PREJUDICE", "MANSFIELD PARK", "EMMA\n", "NORTHANGER ABBEY",
              "Persuasion\n"]
    pos = [austen.index(t) for t in titles]
    assert pos == sorted(pos)
    shakes = D.load_text("shakespeare")
    assert len(shakes) > 1_000_000
    for s in ("To be, or not to be", "HAMLET:", "Friends, Romans, countrymen", "Out, damned spot"):
        assert s in shakes, s
    assert "**" not in shakes and "\\[" not in shakes


@pytest.mark.parametrize("corpus", D.CORPORA)
def test_split_fixed_and_disjoint(corpus):
    text = D.load_text(corpus)
    train, val = D.split_text(text, "train"), D.split_text(text, "val")
    assert train + val == text
    assert train.endswith("\n")
    assert 0.09 < len(val) / len(text) < 0.11
    assert len(train) == text.find("\n", int(0.9 * len(text))) + 1  # the documented rule
    tr, va = D.token_stream(corpus, "char", "train"), D.token_stream(corpus, "char", "val")
    assert tr.dtype == torch.int64 and tr.dim() == 1
    assert (tr.numel(), va.numel()) == (len(train), len(val))
    assert D.token_stream(corpus, "char", "train") is tr  # cached


def test_token_counts_recorded_in_readmes():
    counts = D.token_counts()
    assert set(counts) == {(c, t, s) for c in D.CORPORA for t in D.TOKENIZERS for s in D.SPLITS}
    for (corpus, tok, split), n in counts.items():
        assert n > 10_000
        readme = (D.DATA_DIR / corpus / "README.md").read_text()
        row = re.search(rf"^\|\s*{tok}\S*\s*\|\s*{split}\s*\|\s*([\d,]+)\s*\|", readme, re.M)
        assert row, f"no {tok}/{split} row in {corpus} README"
        assert int(row.group(1).replace(",", "")) == n
    # BPE compresses: ~3-4 chars per token
    assert 2.5 < counts[("austen", "char", "train")] / counts[("austen", "bpe", "train")] < 5


# --- tokenizers -------------------------------------------------------------------------------------

def test_char_tokenizer_round_trip():
    tok = D.get_tokenizer("char", "austen")
    text = D.load_text("austen")
    assert tok.vocab_size == len(set(text)) and tok.chars == "".join(sorted(set(text)))
    sample = text[686000:690000]
    ids = tok.encode(sample)
    assert len(ids) == len(sample) and max(ids) < tok.vocab_size and min(ids) >= 0
    assert tok.decode(ids) == sample
    assert tok.decode(torch.tensor(ids)) == sample
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("Elizabeth ☃")


@pytest.mark.parametrize("corpus", D.CORPORA)
def test_bpe_tokenizer_round_trip(corpus):
    tok = D.get_tokenizer("bpe", corpus)
    assert tok.vocab_size == 4096 and tok.name == f"{corpus}_bpe4096"
    val = D.split_text(D.load_text(corpus), "val")[:20000]
    ids = tok.encode(val)
    assert len(ids) < len(val) / 2.5
    assert tok.decode(ids) == val
    odd = "Zürich 東京 ☃ \t tabs\n\n  spaces"  # byte-level: any text round-trips
    assert tok.decode(tok.encode(odd)) == odd
    assert D.token_stream(corpus, "bpe", "val")[:50].tolist() == tok.encode(D.split_text(D.load_text(corpus), "val"))[:50]


def test_bpe_training_on_demand(tmp_path, monkeypatch):
    path = D.train_bpe("shakespeare", 300, out_dir=tmp_path)
    assert path.name == "shakespeare_bpe300.json"
    tok = D.BPETokenizer(path)
    assert tok.vocab_size == 300
    path2 = D.train_bpe("shakespeare", 300, out_dir=tmp_path / "again")
    assert path.read_bytes() == path2.read_bytes()  # deterministic


# --- errors -----------------------------------------------------------------------------------------

def test_bad_names_raise_value_error_listing_allowed():
    with pytest.raises(ValueError, match=r"'austen'.*'shakespeare'"):
        D.load_text("tolstoy")
    with pytest.raises(ValueError, match=r"'char'.*'bpe'"):
        D.get_tokenizer("wordpiece")
    with pytest.raises(ValueError, match=r"'train'.*'val'"):
        D.token_stream("austen", "char", "test")
    with pytest.raises(ValueError, match=r"'austen'"):
        D.token_stream("c4")


def test_missing_data_raises_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DATA_DIR", tmp_path)
    for call in (lambda: D.load_text("austen"), lambda: D.token_stream("shakespeare"),
                 lambda: D.get_tokenizer("bpe", "austen")):
        with pytest.raises(D.DataError, match="make data") as e:
            call()
        assert isinstance(e.value, RuntimeError) and isinstance(e.value, FileNotFoundError)


def test_corrupt_data_raises_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DATA_DIR", tmp_path)
    (tmp_path / "austen").mkdir()
    real = (REPO / "data" / "austen" / "austen.txt").read_bytes()
    (tmp_path / "austen" / "austen.txt").write_bytes(real[:-10] + b"corrupted\n")
    with pytest.raises(D.DataError, match="make data"):
        D.load_text("austen")
    (tmp_path / "tokenizers").mkdir()
    (tmp_path / "tokenizers" / "austen_bpe4096.json").write_text("{not json")
    with pytest.raises(D.DataError, match="make data"):
        D.get_tokenizer("bpe", "austen")


# --- data/prepare.py ---------------------------------------------------------------------------------

def test_prepare_fails_loudly_on_checksum_mismatch(prepare, tmp_path):
    f = tmp_path / "pkg.deb"
    f.write_bytes(b"not the package")
    with pytest.raises(prepare.PrepareError, match="(?s)sha256 mismatch.*make data"):
        prepare.check_sha256(f, "0" * 64, "pkg.deb")
    out = tmp_path / "corpus.txt"
    out.write_text("old")
    with pytest.raises(prepare.PrepareError, match="sha256"):
        prepare.write_checked("new text", out, "0" * 64, "test corpus")
    assert out.read_text() == "old"  # left untouched
    good = hashlib.sha256(b"new text").hexdigest()
    prepare.write_checked("new text", out, good, "test corpus")
    assert out.read_text() == "new text"


# --- any text as a corpus ---------------------------------------------------------------------------

def _text(n_lines=400):
    words = ["emma", "harriet", "knightley", "walk", "the", "garden", "letter", "said", "quite", "never"]
    return "".join(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(9)) + ".\n" for i in range(n_lines))


def test_a_text_file_is_a_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "DATA_DIR", tmp_path)  # trained tokenizers go to tmp_path/_build
    path = tmp_path / "my notes.txt"
    path.write_text(_text())
    corpus = str(path)
    D.check_corpus(corpus)
    assert D.load_text(corpus) == path.read_text()
    name = D.corpus_name(corpus)
    assert name.startswith("my_notes-") and len(name) == len("my_notes-") + 8
    train, val = D.token_stream(corpus, "char", "train"), D.token_stream(corpus, "char", "val")
    tok = D.get_tokenizer("char", corpus)
    assert tok.decode(train) + tok.decode(val) == path.read_text()
    bpe = D.get_tokenizer("bpe", corpus, vocab_size=300)
    assert bpe.vocab_size <= 300 and bpe.decode(bpe.encode("emma said")) == "emma said"
    assert (tmp_path / "_build" / "tokenizers" / f"{name}_bpe300.json").is_file()
    path.write_text(_text(300))  # a changed file gets a new name: no stale tokenizer
    D.clear_caches()
    assert D.corpus_name(corpus) != name
    with pytest.raises(ValueError, match=r"unknown corpus .*'austen', 'shakespeare'.*hf:NAME_OR_PATH"):
        D.check_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00 not utf-8")
    with pytest.raises(ValueError, match="not UTF-8"):
        D.load_text(str(tmp_path / "bin.txt"))


def test_a_datasets_dataset_is_a_corpus_and_trains(tmp_path, one_thread):
    pytest.importorskip("datasets")
    from soap_lab.train.loop import train
    from soap_lab.train.config import TrainConfig

    docs = [{"text": line} for line in _text(300).splitlines()]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    corpus = f"hf:{path}"
    assert D.load_text(corpus) == "\n\n".join(d["text"] for d in docs)
    r = train(TrainConfig(corpus=corpus, preset="tiny", steps=3, batch_size=2, seq_len=32, eval_batches=1,
                          progress=False, save=False))
    assert r.summary["steps_done"] == 3 and r.config.corpus == corpus
    assert r.model["vocab_size"] == D.get_tokenizer("char", corpus).vocab_size
