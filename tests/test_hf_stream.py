"""soap_lab.train.hf_stream: a Hugging Face ``datasets`` dataset tokenized into one stream, document by document."""
import json

import pytest
import torch

from soap_lab.train import data as D
from soap_lab.train.hf_stream import hf_token_stream


def test_hf_token_stream_local_jsonl(tmp_path):
    pytest.importorskip("datasets")
    docs = [{"text": f"Document {i}: Emma Woodhouse was handsome.", "id": i} for i in range(10)]
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    tok = D.get_tokenizer("char", "austen")
    cache = tmp_path / "hf_cache"
    full = hf_token_stream(str(path), tok, cache_dir=str(cache))
    assert full.dtype == torch.int64 and full.dim() == 1
    assert tok.decode(full) == "\n\n".join(d["text"] for d in docs)
    two = hf_token_stream(str(path), tok, max_docs=2, cache_dir=str(cache))
    assert tok.decode(two) == docs[0]["text"] + "\n\n" + docs[1]["text"]
    capped = hf_token_stream(str(path), "bpe", max_tokens=17, cache_dir=str(cache))
    assert capped.numel() == 17
    bpe = D.get_tokenizer("bpe")
    expected = bpe.encode(docs[0]["text"]) + bpe.encode("\n\n") + bpe.encode(docs[1]["text"])
    assert capped.tolist() == expected[:17]
    with pytest.raises(ValueError, match="content"):
        hf_token_stream(str(path), tok, text_field="content", cache_dir=str(cache))
