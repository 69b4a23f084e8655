"""soap_lab.studies.frequency: rises with f and their paired differences on a table whose numbers are known
(replaces test_freq_analysis.py, the QR-vs-eigh part of test_seeded_claims.py and the frequency parts of
test_plot_studies.py / test_analysis.py), Holm's correction, the grid against the committed records, the figure."""
import math

import pandas as pd
import pytest

from soap_lab import stats
from soap_lab.studies import frequency as F
from soap_lab.studies import get_scale

T2 = 4.302652729911275  # t_{0.975, 2}

# final loss = base[label] + seed offset + rise[label][f]; seed offsets cancel in every paired difference
BASE = {"SOAP": 1.50, "Shampoo": 1.55, "AdamW": 1.80}
RISE = {"SOAP": {1: 0.0, 10: 0.02, 30: 0.05}, "Shampoo": {1: 0.0, 10: 0.06, 30: 0.15}}
SEED = {0: 0.0, 1: 0.1, 2: -0.05}
NOISE = {0: 0.01, 1: -0.01, 2: 0.03}  # on Shampoo at f = 30, so its interval has a width


def table(eigh_shift=0.005):
    rows = []
    for s, off in SEED.items():
        rows.append(dict(label="AdamW", f=None, seed=s, batch_size=16, steps=100, final_val_loss=BASE["AdamW"] + off))
        for lab in ("SOAP", "Shampoo"):
            for f, r in RISE[lab].items():
                extra = NOISE[s] if (lab, f) == ("Shampoo", 30) else 0.0
                rows.append(dict(label=lab, f=f, seed=s, batch_size=16, steps=100,
                                 final_val_loss=BASE[lab] + off + r + extra))
        for f in (1, 30):  # SOAP − SOAP (eigh) = eigh_shift + 0.001·seed
            rows.append(dict(label="SOAP (eigh)", f=f, seed=s, batch_size=16, steps=100,
                             final_val_loss=BASE["SOAP"] + off + RISE["SOAP"][f] - eigh_shift - 0.001 * s))
    return pd.DataFrame(rows)


def _rows(df, start):
    return [r for r in F.claim_rows(df) if r["claim"].startswith(start)]


def test_rises_per_seed():
    rows = {(r["optimizer"], r["f"]): r for r in F.rise_rows(table())}
    assert rows[("SOAP", 10)]["values"] == pytest.approx([0.02] * 3) and rows[("SOAP", 10)]["f0"] == 1
    sh = rows[("Shampoo", 30)]
    assert sh["values"] == pytest.approx([0.16, 0.14, 0.18]) and sh["mean"] == pytest.approx(0.16)
    assert sh["high"] - sh["mean"] == pytest.approx(T2 * 0.02 / math.sqrt(3), rel=1e-9)  # sample sd 0.02
    assert sh["verdict"] == stats.REPRODUCED


def test_difference_of_rises_its_verdict_and_holm():
    rows = {r["f"]: r for r in _rows(table(), "SOAP's rise")}
    assert rows[30]["values"] == pytest.approx([-0.11, -0.09, -0.13])  # 0.05 − (0.16, 0.14, 0.18)
    assert rows[30]["high"] == pytest.approx(-0.11 + T2 * 0.02 / math.sqrt(3), rel=1e-9)
    assert rows[30]["verdict"] == stats.REPRODUCED and rows[10]["mean"] == pytest.approx(-0.04)
    assert all("holm_verdict" in r for r in rows.values())  # two f's: a family
    assert rows[30]["holm_verdict"] == stats.REPRODUCED and rows[30]["holm_alpha"] == pytest.approx(0.05)  # f = 10 has p = 0: first, at 0.025


def test_holm_turns_a_marginal_verdict_inconclusive():
    from scipy.stats import t

    def at_p(p):  # three seeds whose two-sided t-test against 0 has p-value p (sd 1)
        m = t.isf(p / 2, 2) / math.sqrt(3)
        return {0: -m + 1, 1: -m, 2: -m - 1}

    rows = [stats.claim("a", at_p(0.03), "less"), stats.claim("b", at_p(0.04), "less")]
    assert [r["verdict"] for r in rows] == [stats.REPRODUCED] * 2  # each alone: p < 0.05
    out = stats.holm(rows)
    assert [r["p"] for r in out] == pytest.approx([0.03, 0.04])
    assert [r["holm_alpha"] for r in out] == pytest.approx([0.025, 0.05])
    assert [r["holm_verdict"] for r in out] == [stats.INCONCLUSIVE] * 2  # 0.03 > 0.025: Holm stops at once
    strong = stats.holm([stats.claim("c", at_p(0.01), "less"), stats.claim("d", at_p(0.04), "less")])
    assert [r["holm_verdict"] for r in strong] == [stats.REPRODUCED] * 2  # 0.01 < 0.025, then 0.04 < 0.05
    against = stats.holm([stats.claim("e", {k: -v for k, v in at_p(0.001).items()}, "less")])
    assert against[0]["holm_verdict"] == stats.CONTRADICTED


def test_a_missing_seed_is_left_out_of_the_pairs():
    df = table()
    df = df[~((df["label"] == "Shampoo") & (df["f"] == 30) & (df["seed"] == 2))]
    rows = {r["f"]: r for r in _rows(df, "SOAP's rise")}
    assert rows[30]["seeds"] == [0, 1] and rows[30]["n"] == 2


def test_the_figures_other_claims():
    beat = _rows(table(), "SOAP beats AdamW")
    assert {r["f"] for r in beat} == {1, 10, 30} and all(r["verdict"] == stats.REPRODUCED for r in beat)
    close = _rows(table(), "SOAP and Shampoo close")  # −0.05 on every seed: beyond the 0.02 margin
    assert len(close) == 1 and close[0]["f"] == 1 and close[0]["mean"] == pytest.approx(-0.05)
    assert close[0]["verdict"] == stats.CONTRADICTED
    qr = _rows(table(), "QR refresh")
    assert [r["f"] for r in qr] == [1, 30] and all(r["values"] == pytest.approx([0.005, 0.006, 0.007]) for r in qr)
    assert all(r["verdict"] == stats.REPRODUCED for r in qr)
    assert all(r["verdict"] == stats.CONTRADICTED for r in _rows(table(eigh_shift=0.1), "QR refresh"))


def test_the_grid_at_cpu_freq():
    cfgs = F.STUDY.configs(get_scale("cpu_freq"))
    main = [c for c in cfgs if c.batch_size == 16 and c.steps == 1000]
    assert sorted({c.seed for c in main if c.optimizer == "soap" and not c.hparams}) == list(range(10))
    assert sorted({c.seed for c in main if c.hparams.get("refresh") == "eigh"}) == [0, 1, 2]
    assert {c.batch_size for c in cfgs} == {16, 64, 256} and {c.steps for c in cfgs} == {1000, 3000}
    assert all(c.precondition_frequency is None for c in cfgs if c.optimizer == "adamw")


def test_the_figure_from_the_committed_records_is_the_same_bytes_twice(tmp_path):
    sd = F.STUDY.data(get_scale("cpu_freq"))
    a = F.draw({"cpu_freq": sd, "gpu": None}, tmp_path / "a")
    b = F.draw({"cpu_freq": sd, "gpu": None}, tmp_path / "b")
    assert [p.name for p in a] == ["frequency.png", "frequency.pdf"] and a[0].stat().st_size > 10_000
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    from soap_lab.records.store import MissingResults

    with pytest.raises(MissingResults, match="study run frequency --scale cpu_freq"):
        F.draw({"cpu_freq": None}, tmp_path / "c")
