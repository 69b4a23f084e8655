"""soap_lab.train.loop: budget fractions run their own schedule, repeatable runs, records, bad configs refused."""
import math

import pytest
import torch

from soap_lab.records import store
from soap_lab.train.schedule import lr_at
from soap_lab.train.loop import optimizer_state_bytes, train
from soap_lab.train.config import TrainConfig

pytest.importorskip("soap_lab.train.models")
pytest.importorskip("soap_lab.train.data")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def cfg(tmp_path, **kw):
    base = dict(preset="tiny", steps=6, batch_size=4, seq_len=32, eval_every=3, eval_batches=2,
                progress=False, out_dir=str(tmp_path), experiment="t")
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------------ runs


def test_budget_fraction_runs_its_own_full_schedule(tmp_path):
    r = train(cfg(tmp_path, steps=20, budget_fraction=0.5, warmup_fraction=0.2, lr=1e-2, save=False))
    lrs = r.metrics["lr"]
    assert len(lrs) == 10 == r.summary["steps_done"] == r.summary["steps_total"]
    assert r.summary["warmup_steps_used"] == 2
    assert lrs[0] == pytest.approx(1e-3) and lrs[2] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-3)
    assert lrs == pytest.approx([lr_at(s, 10, 1e-2, 2) for s in range(10)])


def test_cpu_runs_are_repeatable(tmp_path):
    a = train(cfg(tmp_path, save=False))
    b = train(cfg(tmp_path, save=False))
    assert a.metrics["loss"] == b.metrics["loss"]
    assert a.metrics["val_loss"] == b.metrics["val_loss"]
    c = train(cfg(tmp_path, save=False, seed=1))
    assert c.metrics["loss"] != a.metrics["loss"]


def test_record_has_config_metrics_and_provenance(tmp_path):
    config = cfg(tmp_path, grad_accum=2, weight_decay=0.0)
    r = train(config)
    path = tmp_path / "t" / f"{r.run_id}.json"
    assert r.record_path == path and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    rec = store.read_record(path)
    assert rec["run_id"] == store.run_id(config) == path.stem
    assert rec["config"] == store.config_dict(config)
    assert TrainConfig.from_dict(rec["config"]) == config
    m, s, p = rec["metrics"], rec["summary"], rec["provenance"]
    assert m["step"] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "lr", "grad_norm", "time", "step_time", "opt_time"):
        assert len(m[key]) == 6 and all(math.isfinite(v) for v in m[key]), key
    assert all(0 < o <= t for o, t in zip(m["opt_time"], m["step_time"]))
    assert m["time"] == sorted(m["time"])
    assert m["val_step"] == [3, 6] and s["final_val_loss"] == m["val_loss"][-1]
    assert s["tokens_per_step"] == 4 * 32 * 2 and s["tokens"] == 6 * 256
    assert 0 < s["opt_time_share"] < 1
    # AdamW keeps exp_avg and exp_avg_sq (fp32) per parameter, plus a 4-byte step tensor per tensor.
    n_tensors = len(_model_params(config))
    assert s["optimizer_state_bytes"] == 8 * s["num_params"] + 4 * n_tensors
    for key in ("git_commit", "git_dirty", "torch_version", "python_version", "soap_lab_version",
                "start_time", "end_time", "world_size"):
        assert key in p, key
    assert p["device"]["type"] == "cpu" and p["device"]["name"] and p["device"]["cpu"]
    assert p["torch_version"] == torch.__version__ and p["world_size"] == 1
    assert p["start_time"] <= p["end_time"]


def _model_params(config):
    from soap_lab.train import data, models

    tok = data.get_tokenizer(config.tokenizer, corpus=config.corpus, vocab_size=config.vocab_size)
    return list(models.GPT(models.gpt_config(config.preset, tok.vocab_size)).parameters())


def test_optimizer_state_bytes_counts_each_storage_once():
    p = torch.nn.Parameter(torch.zeros(10))
    opt = torch.optim.SGD([p], lr=0.1)
    shared = torch.zeros(100)  # 400 bytes
    opt.state[p] = {"a": shared, "b": shared[:10], "nested": [torch.zeros(5, dtype=torch.float64)], "n": 3}
    assert optimizer_state_bytes(opt) == 400 + 40


def test_bad_configs_list_allowed_values(tmp_path):
    with pytest.raises(ValueError, match="allowed: adamw, adafactor, shampoo"):
        train(cfg(tmp_path, optimizer="adam"))
    with pytest.raises(ValueError, match="allowed: .*tiny.*cpu"):
        train(cfg(tmp_path, preset="huge"))
    with pytest.raises(ValueError, match="takes no precondition_frequency"):
        train(cfg(tmp_path, precondition_frequency=10))
    with pytest.raises(ValueError, match="budget_fraction"):
        train(cfg(tmp_path, budget_fraction=0.0))
    with pytest.raises(ValueError, match="bf16.*CUDA"):
        train(cfg(tmp_path, device="cpu", precision="bf16"))


@pytest.mark.parametrize("name", ["soap", "soap_factorized_one_sided"])
def test_soap_trains(tmp_path, name):
    pytest.importorskip("soap_lab.optim.soap")
    r = train(cfg(tmp_path, optimizer=name, precondition_frequency=2, steps=8, lr=3e-3, save=False))
    assert "_f2_" in r.run_id
    assert not r.summary["diverged"] and math.isfinite(r.summary["final_val_loss"])
    assert r.metrics["loss"][-1] < r.metrics["loss"][0]
    assert r.summary["optimizer_state_bytes"] > 0


def test_every_record_field_is_documented(tmp_path):
    """data/runs/README.md describes every field a record holds."""
    doc = (store.REPO_ROOT / "data" / "runs" / "README.md").read_text()
    rec = train(cfg(tmp_path)).record()
    keys = set(rec) | set(rec["config"]) | set(rec["model"]) | set(rec["summary"]) | set(rec["metrics"]) \
        | set(rec["provenance"]) | set(rec["provenance"]["device"])
    missing = sorted(k for k in keys if k not in doc)
    assert not missing, f"data/runs/README.md does not describe {missing}"
