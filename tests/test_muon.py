"""soap_lab.optim.muon: torch's Muon on the hidden matrices, AdamW on embeddings, head and 1-D parameters."""
from __future__ import annotations

import io

import pytest
import torch

from soap_lab.train.models import GPT, gpt_config
from soap_lab.optim import build_optimizer, takes_named_parameters
from soap_lab.optim.muon import MuonAdamW, split_parameters


def _gpt():
    torch.manual_seed(0)
    return GPT(gpt_config("tiny", 16))


def test_the_split_sends_hidden_matrices_to_muon_and_the_rest_to_adamw():
    model = _gpt()
    muon, adamw = split_parameters(model.named_parameters())
    muon_names, adamw_names = {n for n, _ in muon}, {n for n, _ in adamw}
    assert "tok_emb.weight" in adamw_names and "lm_head.weight" in adamw_names
    assert all(p.dim() == 2 for _, p in muon)
    assert {n for n, p in model.named_parameters() if p.dim() == 1} <= adamw_names
    assert {n for n in muon_names if "attn" in n} and {n for n in muon_names if "mlp" in n}
    opt = build_optimizer("muon", model.named_parameters(), lr=0.02, adamw_lr=0.004)
    assert isinstance(opt.muon, torch.optim.Muon) and isinstance(opt.adamw, torch.optim.AdamW)
    ids = lambda groups: {id(p) for g in groups for p in g["params"]}
    assert ids(opt.muon.param_groups) == {id(p) for _, p in muon}
    assert ids(opt.adamw.param_groups) == {id(p) for _, p in adamw}
    assert [g["lr_scale"] for g in opt.param_groups] == [1.0, 0.2]
    assert takes_named_parameters("muon") and not takes_named_parameters("soap")


def test_one_line_errors():
    with pytest.raises(ValueError, match="no 2-D hidden matrix") as e:
        MuonAdamW([("ln.weight", torch.nn.Parameter(torch.ones(4))), ("tok_emb.weight", torch.nn.Parameter(torch.ones(3, 4)))])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="needs named parameters"):
        MuonAdamW([torch.nn.Parameter(torch.ones(3, 4))])
    with pytest.raises(ValueError, match="'muon'"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.ones(3, 4))]}])
    with pytest.raises(ValueError, match="lr must be a positive"):
        MuonAdamW([("w", torch.nn.Parameter(torch.ones(3, 4)))], lr=float("nan"))
    with pytest.raises(ValueError, match="no ZeRO-1 form"):
        from soap_lab.optim.zero import build_zero_optimizer
        build_zero_optimizer("muon", [("w", torch.nn.Parameter(torch.ones(3, 4)))])


def test_param_groups_with_a_flag_work_without_names():
    w, b = torch.nn.Parameter(torch.ones(3, 4)), torch.nn.Parameter(torch.ones(4))
    opt = MuonAdamW([{"params": [w], "muon": True}, {"params": [b], "muon": False}], lr=0.01)
    assert opt.muon.param_groups[0]["params"][0] is w and opt.adamw.param_groups[0]["params"][0] is b


def test_each_part_takes_torchs_own_step():
    """The composite is exactly torch's Muon and AdamW side by side (no Newton–Schulz of our own)."""
    model = _gpt()
    twin = _gpt()
    opt = MuonAdamW(model.named_parameters(), lr=0.02, adamw_lr=0.005, weight_decay=0.01)
    m, a = split_parameters(twin.named_parameters())
    ref_m = torch.optim.Muon([p for _, p in m], lr=0.02, weight_decay=0.01, momentum=0.95)
    ref_a = torch.optim.AdamW([p for _, p in a], lr=0.005, betas=(0.95, 0.95), eps=1e-8, weight_decay=0.01)
    x = torch.randint(0, 16, (4, 32))
    for _ in range(3):
        for net, opts in ((model, [opt]), (twin, [ref_m, ref_a])):
            _, loss = net(x, x)
            loss.backward()
            for o in opts:
                o.step()
                o.zero_grad()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_resume_is_bit_exact():
    x = torch.randint(0, 16, (4, 32))

    def run(model, opt, steps):
        for _ in range(steps):
            _, loss = model(x, x)
            loss.backward()
            opt.step()
            opt.zero_grad()

    full = _gpt()
    opt_full = MuonAdamW(full.named_parameters(), lr=0.02, adamw_lr=0.005)
    run(full, opt_full, 6)
    half = _gpt()
    opt_half = MuonAdamW(half.named_parameters(), lr=0.02, adamw_lr=0.005)
    run(half, opt_half, 3)
    buf = io.BytesIO()
    torch.save({"model": half.state_dict(), "opt": opt_half.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = _gpt()
    resumed.load_state_dict(saved["model"])
    opt_res = MuonAdamW(resumed.named_parameters(), lr=0.02, adamw_lr=0.005)
    opt_res.load_state_dict(saved["opt"])
    run(resumed, opt_res, 3)
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="not a MuonAdamW state_dict"):
        opt_res.load_state_dict({"state": {}, "param_groups": []})
