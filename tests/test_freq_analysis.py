"""Rises with f and their paired differences, on a table of final losses whose numbers are known."""
import math

import pandas as pd
import pytest

from soap_lab import freq_analysis as fa
from soap_lab import stats

T2 = 4.302652729911275  # t_{0.975, 2}

# final loss = base[opt] + seed offset + rise[opt][f]; seed offsets cancel in every paired difference
BASE = {"soap": 1.50, "shampoo": 1.55, "adamw": 1.80}
RISE = {"soap": {1: 0.0, 10: 0.02, 30: 0.05}, "shampoo": {1: 0.0, 10: 0.06, 30: 0.15}}
SEED = {0: 0.0, 1: 0.1, 2: -0.05}
# per-seed noise on Shampoo at f=30 so its interval has a width
NOISE = {0: 0.01, 1: -0.01, 2: 0.03}


def table():
    rows = []
    for s, off in SEED.items():
        rows.append(dict(run_id=f"a{s}", optimizer="adamw", label="AdamW", f=None, seed=s, batch_size=16, steps=100,
                         final_val_loss=BASE["adamw"] + off))
        for opt in ("soap", "shampoo"):
            for f, r in RISE[opt].items():
                extra = NOISE[s] if (opt, f) == ("shampoo", 30) else 0.0
                rows.append(dict(run_id=f"{opt}{f}s{s}", optimizer=opt, label=opt, f=f, seed=s, batch_size=16,
                                 steps=100, final_val_loss=BASE[opt] + off + r + extra))
    return pd.DataFrame(rows)


def test_rises_per_seed():
    rows = {(r["optimizer"], r["f"]): r for r in fa.rise_table(table())}
    assert rows[("soap", 10)]["values"] == pytest.approx([0.02] * 3)
    assert rows[("soap", 10)]["n"] == 3 and rows[("soap", 10)]["f0"] == 1
    sh = rows[("shampoo", 30)]
    assert sh["values"] == pytest.approx([0.16, 0.14, 0.18]) and sh["mean"] == pytest.approx(0.16)
    # sample sd of (0.16, 0.14, 0.18) is 0.02
    assert sh["high"] - sh["mean"] == pytest.approx(T2 * 0.02 / math.sqrt(3), rel=1e-9)
    assert sh["verdict"] == stats.REPRODUCED


def test_difference_of_rises_and_its_verdict():
    rows = {r["f"]: r for r in fa.rise_difference_table(table())}
    # f=30: SOAP rises 0.05, Shampoo 0.16/0.14/0.18 -> differences -0.11, -0.09, -0.13
    assert rows[30]["values"] == pytest.approx([-0.11, -0.09, -0.13])
    assert rows[30]["high"] == pytest.approx(-0.11 + T2 * 0.02 / math.sqrt(3), rel=1e-9)
    assert rows[30]["verdict"] == stats.REPRODUCED  # -0.11 + 0.0497 < 0
    # f=10: differences exactly -0.04 on every seed: zero width, reproduced
    assert rows[10]["mean"] == pytest.approx(-0.04)


def test_a_missing_seed_is_left_out_of_the_pairs():
    df = table()
    df = df[~((df["optimizer"] == "shampoo") & (df["f"] == 30) & (df["seed"] == 2))]
    rows = {r["f"]: r for r in fa.rise_difference_table(df)}
    assert rows[30]["seeds"] == [0, 1] and rows[30]["n"] == 2


def test_claims_of_the_figure():
    out = fa.claims(table())
    beat = [r for r in out if r["claim"].startswith("soap beats AdamW")]
    assert {r["f"] for r in beat} == {1, 10, 30} and all(r["verdict"] == stats.REPRODUCED for r in beat)
    close = [r for r in out if r["claim"].startswith("SOAP and Shampoo close")]
    # SOAP − Shampoo at f=1 is -0.05 on every seed: beyond the 0.02 margin -> not "close"
    assert len(close) == 1 and close[0]["f"] == 1 and close[0]["mean"] == pytest.approx(-0.05)
    assert close[0]["verdict"] == stats.CONTRADICTED


def test_the_figure_draws_every_seed_and_names_a_missing_scale(tmp_path):
    pytest.importorskip("seaborn")
    from types import SimpleNamespace

    from soap_lab import ablations, plot_seeds

    paths = plot_seeds.plot_frequency_seeded({"cpu_freq": [SimpleNamespace(runs=table())], "other": None}, tmp_path)
    assert [p.name for p in paths] == ["frequency_seeded.png", "frequency_seeded.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(ablations.MissingResults, match="soap_lab.freq_study"):
        plot_seeds.plot_frequency_seeded({"cpu_freq": None}, tmp_path)


def test_markdown_report_holds_every_row():
    text = fa.markdown(table())
    lines = text.splitlines()
    assert "| 16 | 100 | shampoo | 1 → 30 | +0.1600 ± " in text
    assert sum(ln.startswith("| SOAP's rise") for ln in lines) == 2  # f = 10 and 30
    assert all(ln.count("|") == 9 for ln in lines if ln.startswith("|"))
