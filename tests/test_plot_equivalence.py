"""soap_lab.plot_equivalence: the Claim 1 figure (saved, or returned with values circled for the widget) and the
gap figure, from small computed data sets."""
import pytest

pytest.importorskip("seaborn")
import matplotlib.pyplot as plt  # noqa: E402

from soap_lab import ablations, plot_equivalence  # noqa: E402
from soap_lab.equivalence import experiments


def test_claim1_figure_saved_or_returned(tmp_path):
    d = experiments.claim1_study(m=5, n=4, n_batches=8, max_staleness=3, exponents=(0.25, 0.5))
    paths = plot_equivalence.plot_claim1(d, tmp_path)
    assert [p.name for p in paths] == ["equivalence_claim1.png", "equivalence_claim1.pdf"]
    fig = plot_equivalence.plot_claim1(d, None, highlight={"exponent": 0.25, "staleness": 2})
    assert len(fig.axes) == 4
    plt.close(fig)


def test_gap_figure(tmp_path):
    g = experiments.gap_trajectory(frequencies=(2,), refreshes=("qr",), problems=("teaching",), steps=8, m=5, n=4, batch=16)
    paths = plot_equivalence.plot_gap(g, tmp_path)
    assert [p.name for p in paths] == ["equivalence_gap.png", "equivalence_gap.pdf"] and paths[0].stat().st_size > 1000
    with pytest.raises(ablations.MissingResults, match="the gap trajectory has no rows"):
        plot_equivalence.plot_gap({"params": g["params"], "columns": {}}, tmp_path)
