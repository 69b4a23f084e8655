"""soap_lab.train.batches: reproducible, resumable, DDP-aware training windows and fixed validation windows."""
import json

import pytest
import torch

from soap_lab.train import batches as B
from soap_lab.train import data as D


def test_batch_sampler_shapes_shift_and_reproducibility():
    tokens = D.token_stream("shakespeare", "char", "train")
    s1, s2 = B.BatchSampler(tokens, 4, 16, seed=3), B.BatchSampler(tokens, 4, 16, seed=3)
    for _ in range(3):
        (x1, y1), (x2, y2) = s1.next(), s2.next()
        assert x1.shape == y1.shape == (4, 16) and x1.dtype == torch.int64
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.equal(x1[:, 1:], y1[:, :-1])
    # each row is a contiguous window of the stream
    start = s1.global_starts(2)[0]
    assert torch.equal(x1[0], tokens[start:start + 16]) and torch.equal(y1[0], tokens[start + 1:start + 17])
    other = B.BatchSampler(tokens, 4, 16, seed=4).next()[0]
    assert not torch.equal(other, B.BatchSampler(tokens, 4, 16, seed=3).next()[0])


def test_batch_sampler_state_dict_resume():
    tokens = torch.arange(1000)
    a = B.BatchSampler(tokens, 3, 8, seed=7)
    for _ in range(5):
        a.next()
    sd = json.loads(json.dumps(a.state_dict()))  # JSON-serializable
    expected = [a.next() for _ in range(3)]
    b = B.BatchSampler(tokens, 3, 8, seed=0)
    b.load_state_dict(sd)
    for (x, y), (xe, ye) in zip((b.next() for _ in range(3)), expected):
        assert torch.equal(x, xe) and torch.equal(y, ye)
    with pytest.raises(ValueError):
        B.BatchSampler(tokens, 5, 8).load_state_dict(sd)


def test_batch_sampler_ddp_ranks_partition_global_batch():
    tokens = torch.arange(5000)
    single = B.BatchSampler(tokens, 8, 12, seed=1)
    ranks = [B.BatchSampler(tokens, 2, 12, seed=1, rank=r, world_size=4) for r in range(4)]
    for _ in range(3):
        x, y = single.next()
        parts = [r.next() for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
    # resuming a 4-rank run in one process (same global batch) is allowed
    single2 = B.BatchSampler(tokens, 8, 12)
    single2.load_state_dict(ranks[0].state_dict())
    assert torch.equal(single2.next()[0], torch.cat([r.next()[0] for r in ranks]))
    with pytest.raises(ValueError):
        B.BatchSampler(tokens, 2, 12, rank=4, world_size=4)


def test_eval_batches_fixed_and_covering():
    tokens = torch.arange(10_000)
    b1 = B.eval_batches(tokens, 4, 32, 3)
    b2 = B.eval_batches(tokens, 4, 32, 3)
    assert len(b1) == 3
    for (x, y), (x2, y2) in zip(b1, b2):
        assert x.shape == (4, 32) and torch.equal(x, x2) and torch.equal(y, y2)
        assert torch.equal(y, x + 1)
    assert b1[0][0][0, 0] == 0 and b1[-1][1][-1, -1] == 9_999  # first and last token covered
    with pytest.raises(ValueError):
        B.eval_batches(torch.arange(10), 1, 32, 1)
