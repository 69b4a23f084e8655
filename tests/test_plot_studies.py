"""soap_lab.plot_studies: the final-loss figures (lr sweep, frequency, batch size, variants) from synthetic records."""
import pytest

pytest.importorskip("seaborn")
from soap_lab import ablations, analysis, plot_studies  # noqa: E402


@pytest.mark.parametrize("study, plot", [("lr_sweep", "plot_lr_sweep"), ("frequency", "plot_frequency"),
                                         ("batch_size", "plot_batch_size"), ("variants", "plot_variants")])
def test_each_figure_names_a_missing_scale(synthetic_pool, synthetic_scale, tmp_path, study, plot):
    sd = analysis.study_data(study, synthetic_scale, synthetic_pool)
    paths = getattr(plot_studies, plot)({"cpu": sd, "gpu": None}, tmp_path)  # gpu missing: a footer note
    assert [p.name for p in paths] == [f"{study}.png", f"{study}.pdf"] and paths[0].stat().st_size > 1000


def test_no_scale_with_results_is_an_error(tmp_path):
    with pytest.raises(ablations.MissingResults, match="make ablations SCALE=cpu"):
        plot_studies.plot_variants({"cpu": None}, tmp_path)
