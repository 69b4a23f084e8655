"""C4/FineWeb-scale token streams: any Hugging Face ``datasets`` dataset (hub name, local file or saved dataset),
tokenized document by document into the same kind of 1-D int64 stream as :func:`soap_lab.train.data.token_stream`,
without joining it into one text first. Needs the ``datasets`` package (a dev extra).
"""
from __future__ import annotations

import numpy as np
import torch

from . import data

__all__ = ["hf_token_stream"]


def hf_token_stream(name_or_path: str, tokenizer, split: str = "train", text_field: str = "text",
                    max_docs: int | None = None, max_tokens: int | None = None, separator: str = "\n\n",
                    **load_kwargs) -> torch.Tensor:
    """Tokenize a Hugging Face ``datasets`` dataset into one 1-D int64 token stream.

    ``name_or_path``: a hub name (e.g. ``"allenai/c4"`` with ``name="en"``, ``streaming=True`` in
    ``load_kwargs``), a local ``.json``/``.jsonl``/``.parquet``/``.txt``/``.csv`` file, or a directory
    written by ``Dataset.save_to_disk``. ``tokenizer``: a tokenizer object (``.encode``) or a kind for
    :func:`soap_lab.train.data.get_tokenizer` (``"char"``/``"bpe"``, Austen's). Documents are taken in dataset order, joined
    by ``separator`` (encoded like text), stopping after ``max_docs`` documents or once ``max_tokens`` tokens
    are collected (the stream is cut to exactly ``max_tokens``). Other keyword arguments go to
    ``datasets.load_dataset`` (``cache_dir``, ``name``, ``streaming``, ``data_files`` ...).
    """
    if isinstance(tokenizer, str):
        tokenizer = data.get_tokenizer(tokenizer)
    ds = data.hf_documents(name_or_path, split, load_kwargs)
    columns = getattr(ds, "column_names", None)
    if columns is not None and text_field not in columns:
        raise ValueError(f"text_field {text_field!r} not in the dataset; columns: {columns}")
    sep = np.asarray(tokenizer.encode(separator), dtype=np.int64) if separator else np.zeros(0, np.int64)
    chunks: list[np.ndarray] = []
    total = 0
    batch: list[str] = []

    def flush() -> bool:
        nonlocal total, batch
        enc = tokenizer.encode_batch(batch) if hasattr(tokenizer, "encode_batch") else [tokenizer.encode(t) for t in batch]
        batch = []
        for ids in enc:
            if chunks:
                chunks.append(sep)
                total += len(sep)
            chunks.append(np.asarray(ids, dtype=np.int64))
            total += len(ids)
            if max_tokens is not None and total >= max_tokens:
                return True
        return False

    done = False
    for i, doc in enumerate(ds):
        if max_docs is not None and i >= max_docs:
            break
        if text_field not in doc:
            raise ValueError(f"text_field {text_field!r} not in the dataset; fields: {list(doc)}")
        batch.append(doc[text_field] or "")
        if len(batch) >= 256 and flush():
            done = True
            break
    if not done and batch:
        flush()
    out = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    if max_tokens is not None:
        out = out[:max_tokens]
    return torch.from_numpy(np.ascontiguousarray(out))
