"""soap_lab.plot_studies: the final-loss figures (lr sweep, frequency, batch size, variants) from synthetic records,
with one seed and with three (``synthetic_seeded_pool``: every loss moved by a known amount per seed), and the
seed helpers they draw with (``soap_lab.seedwise``) on known numbers."""
import math

import pandas as pd
import pytest

pytest.importorskip("seaborn")
from conftest import SEED_FACTOR, SEED_SHIFT  # noqa: E402

from soap_lab import ablations, analysis, figures, plot_studies, seedwise  # noqa: E402

T_975_2 = 4.302652729749464  # Student t quantile 0.975 with 2 degrees of freedom (tables)
T_975_1 = 12.706204736174698  # ... with 1 degree of freedom

STUDIES = [("lr_sweep", "plot_lr_sweep"), ("frequency", "plot_frequency"), ("batch_size", "plot_batch_size"),
           ("variants", "plot_variants")]


@pytest.mark.parametrize("study, plot", STUDIES)
def test_each_figure_names_a_missing_scale(synthetic_pool, synthetic_scale, tmp_path, study, plot):
    sd = analysis.study_data(study, synthetic_scale, synthetic_pool)
    paths = getattr(plot_studies, plot)({"cpu": sd, "gpu": None}, tmp_path)  # gpu missing: a footer note
    assert [p.name for p in paths] == [f"{study}.png", f"{study}.pdf"] and paths[0].stat().st_size > 1000


def test_no_scale_with_results_is_an_error(tmp_path):
    with pytest.raises(ablations.MissingResults, match="make ablations SCALE=cpu"):
        plot_studies.plot_variants({"cpu": None}, tmp_path)


# ------------------------------------------------------------------------------------------ seeds
def test_mean_ci_gives_the_student_t_interval():
    m, h, n = seedwise.mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and h == pytest.approx(T_975_2 * 1.0 / math.sqrt(3), rel=1e-12)
    m, h, n = seedwise.mean_ci([1.0, 2.0])
    assert m == 1.5 and h == pytest.approx(T_975_1 * math.sqrt(0.5) / math.sqrt(2), rel=1e-12)
    assert seedwise.mean_ci([5.0]) == (5.0, 0.0, 1)  # one seed: no interval
    assert seedwise.mean_ci([4.0, float("nan"), None])[1:] == (0.0, 1)  # diverged seeds are left out
    assert math.isnan(seedwise.mean_ci([])[0])


def test_summarize_one_row_per_configuration_sorted():
    df = pd.DataFrame({"label": ["B", "A", "A", "A", "B"], "seed": [0, 2, 0, 1, 1],
                       "final_val_loss": [5.0, 3.0, 1.0, 2.0, float("nan")]})
    s = seedwise.summarize(df, ["label"])
    assert list(s["label"]) == ["A", "B"]
    a, b = s.iloc[0], s.iloc[1]
    assert a["values"] == [1.0, 2.0, 3.0] and a["seeds"] == [0, 1, 2]  # by seed
    assert a["mean"] == 2.0 and a["half"] == pytest.approx(T_975_2 / math.sqrt(3))
    assert a["low"] == pytest.approx(2 - T_975_2 / math.sqrt(3)) and a["n"] == 3 and a["n_runs"] == 3
    assert (b["n"], b["n_runs"], b["half"], b["values"]) == (1, 2, 0.0, [5.0])


def test_n_text_and_pm():
    assert seedwise.n_text([3, 3]) == "n = 3 seeds"
    assert seedwise.n_text([1, 3, 2], where=" per point") == "n = 1–3 seeds per point"
    assert seedwise.n_text([1]) == "n = 1 seed (no interval)"
    assert seedwise.n_text([3], unit="timing round") == "n = 3 timing rounds"
    assert seedwise.pm(1.5, 0.25, 3) == "1.500 ± 0.250" and seedwise.pm(1.5, 0.0, 1) == "1.500"


def _shifts(opt):
    return [SEED_SHIFT[s] * SEED_FACTOR.get(opt, 1.0) for s in (0, 1, 2)]


def test_seeded_frequency_summary_has_the_known_mean_and_interval(synthetic_seeded_pool, synthetic_seeded_scale):
    sd = analysis.study_data("frequency", synthetic_seeded_scale, synthetic_seeded_pool)
    tab = analysis.frequency_table(sd)
    assert sorted(tab["seed"].unique()) == [0, 1, 2]
    summ = seedwise.summarize(tab[tab["label"] == "SOAP"], ["f"])
    row = summ[summ["f"] == 1].iloc[0]
    vals = [1.8 + 3 * 40 ** -0.5 + d for d in _shifts("soap")]  # conftest: a + 3 (step·batch/8)^-0.5 + seed shift
    mean = sum(vals) / 3
    sd3 = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2)
    assert row["n"] == 3 and row["mean"] == pytest.approx(mean) and row["half"] == pytest.approx(T_975_2 * sd3 / math.sqrt(3))


def test_lr_sweep_is_read_on_every_seed_and_tuned_on_the_tuning_seeds(synthetic_seeded_pool, synthetic_seeded_scale):
    sc = synthetic_seeded_scale
    sd = figures._study_datas("lr_sweep", {"x": sc}, synthetic_seeded_pool, {})["x"]
    assert sd.scale == sc and tuple(sc.lr_seeds) == (0,)  # the StudyData keeps the scale: tuned on seed 0
    assert sorted(sd.runs["seed"].unique()) == [0, 1, 2] and not sd.missing
    assert analysis.tuned_lrs(sd) == {lb: 1e-2 for lb in ("AdamW", "SOAP", "Shampoo")}
    assert analysis.tuned_lrs(sd)["SOAP"] == ablations.tuned_lr("soap", sc, synthetic_seeded_pool)


def test_batch_size_target_is_each_seeds_own_adamw(synthetic_seeded_pool, synthetic_seeded_scale):
    tab = analysis.batch_size_table(analysis.study_data("batch_size", synthetic_seeded_scale, synthetic_seeded_pool))
    for seed, d in zip((0, 1, 2), _shifts("adamw")):
        g = tab[tab["seed"] == seed]
        assert list(g["target"]) == pytest.approx([2.0 + d + 3 * (40 * 4 / 8) ** -0.5] * len(g))  # AdamW, batch 4
        adam4 = g[(g["optimizer"] == "adamw") & (g["batch_size"] == 4)].iloc[0]
        assert adam4["steps_to_target"] == pytest.approx(40)  # reaches its own final loss at the last step


@pytest.mark.parametrize("study, plot", STUDIES)
def test_seeded_figures_draw_next_to_a_single_seed_scale(synthetic_pool, synthetic_scale, synthetic_seeded_pool,
                                                         synthetic_seeded_scale, tmp_path, study, plot):
    seeded = figures._study_datas(study, {"s": synthetic_seeded_scale}, synthetic_seeded_pool, {})["s"]
    single = analysis.study_data(study, synthetic_scale, synthetic_pool)
    data = {"cpu": single, "cpu_freq": seeded, "gpu": None}
    a = getattr(plot_studies, plot)(data, tmp_path / "a")
    b = getattr(plot_studies, plot)(data, tmp_path / "b")
    assert [p.name for p in a] == [f"{study}.png", f"{study}.pdf"] and a[0].stat().st_size > 1000
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]  # the same bytes on every run


def test_a_diverged_seed_is_drawn_and_left_out_of_the_mean(synthetic_seeded_pool, synthetic_seeded_scale, tmp_path):
    sd = analysis.study_data("variants", synthetic_seeded_scale, synthetic_seeded_pool)
    runs = sd.runs.copy()
    runs.loc[(runs["label"] == "SOAP one-sided") & (runs["seed"] == 2), "final_val_loss"] = float("nan")
    sd.runs = runs
    summ = seedwise.summarize(analysis.variants_table(sd), ["label"]).set_index("label")
    assert summ.loc["SOAP one-sided", "n"] == 2 and summ.loc["SOAP one-sided", "n_runs"] == 3
    assert plot_studies.plot_variants({"cpu_freq": sd}, tmp_path)[0].stat().st_size > 1000
