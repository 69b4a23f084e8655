"""soap_lab.figures.style: one colour per optimizer, one row of panels per scale with results, a footer naming the
rest, figures saved as PNG + PDF without timestamps, drawn values rounded."""
import pytest

pytest.importorskip("seaborn")
import matplotlib.pyplot as plt  # noqa: E402

from soap_lab.figures import style as plotting  # noqa: E402
from soap_lab.records.store import MissingResults  # noqa: E402


def test_every_optimizer_label_has_its_own_colour():
    labels = ["AdamW", "Shampoo", "SOAP", "SOAP (eigh)", "SOAP factorized", "SOAP one-sided",
              "SOAP factorized + one-sided", "EigenAdafactor", "Adafactor", "Muon"]
    colours = [plotting.color(label) for label in labels]
    assert len(set(colours)) == len(labels) and plotting.color("Lion") not in colours


def test_missing_hint_names_the_command_of_each_scale():
    assert plotting.missing_hint("cpu") == "python -m soap_lab study run --all --scale cpu"
    assert plotting.missing_hint("cpu_freq-1a2b3c", "frequency") == "python -m soap_lab study run frequency --scale cpu_freq"


def test_rounded_keeps_significant_digits_and_non_finite_values():
    import numpy as np

    assert plotting.rounded(1.234567891) == 1.2346 and plotting.rounded(-0.000123456789, 3) == -0.000123
    out = plotting.rounded(np.array([0.0, np.nan, 123456.7, 1 + 3e-9]))
    assert out[0] == 0 and np.isnan(out[1]) and out[2] == 123460.0 and out[3] == 1.0


def test_panel_rows_one_row_per_scale_with_results():
    with plotting.style():
        fig, axes, present, notes = plotting.panel_rows({"cpu": object(), "gpu": None, "big": object()}, 2)
    assert axes.shape == (2, 2) and present == ["cpu", "big"]
    assert notes == ["scale gpu: no results (run `python -m soap_lab study run --all --scale gpu`)"]
    plt.close(fig)
    with pytest.raises(MissingResults, match="no results for any scale: run `python -m soap_lab study run --all"):
        plotting.panel_rows({"cpu": None}, 1)


def test_save_writes_the_same_bytes_twice(tmp_path):
    def draw(out):
        with plotting.style():
            fig, ax = plt.subplots()
            ax.plot([1, 2, 3], [3, 1, 2], color=plotting.color("SOAP"))
            plotting.footer(fig, ["a caption", "", "a caption"])  # said once
            return plotting.save(fig, out, "x")

    a, b = draw(tmp_path / "a"), draw(tmp_path / "b")
    assert [p.name for p in a] == ["x.png", "x.pdf"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
