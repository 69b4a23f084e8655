"""soap_lab.plotting: one colour per optimizer, one row of panels per scale with results, a footer naming the rest,
figures saved as PNG + PDF without timestamps."""
import pytest

pytest.importorskip("seaborn")
import matplotlib.pyplot as plt  # noqa: E402

from soap_lab import ablations, plotting  # noqa: E402


def test_every_optimizer_label_has_its_own_colour():
    labels = ["AdamW", "Shampoo", "SOAP", "SOAP (eigh)", "SOAP factorized", "SOAP one-sided",
              "SOAP factorized + one-sided", "EigenAdafactor", "Adafactor"]
    colours = [plotting.color(label) for label in labels]
    assert len(set(colours)) == len(labels) and plotting.color("Lion") not in colours


def test_missing_hint_names_the_command_of_each_scale():
    assert plotting.missing_hint("cpu") == "make ablations SCALE=cpu"
    assert plotting.missing_hint("gpu") == "make ablations SCALE=gpu DEVICE=cuda"
    # the seeded scale is trained by freq_study, never by make ablations
    assert plotting.missing_hint("cpu_freq") == "python -m soap_lab.freq_study --scale cpu_freq --arms seeded others"
    assert plotting.missing_hint("cpu_freq", timing=True) == "python -m soap_lab.freq_study --timing"


def test_panel_rows_one_row_per_scale_with_results():
    with plotting.style():
        fig, axes, present, notes = plotting.panel_rows({"cpu": object(), "gpu": None, "big": object()}, 2)
    assert axes.shape == (2, 2) and present == ["cpu", "big"]
    assert notes == ["scale gpu: no results (run `make ablations SCALE=gpu DEVICE=cuda`)"]
    plt.close(fig)
    with pytest.raises(ablations.MissingResults, match="no results for any scale: run `make ablations SCALE=cpu`"):
        plotting.panel_rows({"cpu": None}, 1)


def test_save_writes_the_same_bytes_twice(tmp_path):
    def draw(out):
        with plotting.style():
            fig, ax = plt.subplots()
            ax.plot([1, 2, 3], [3, 1, 2], color=plotting.color("SOAP"))
            plotting.footer(fig, ["a caption", ""])
            return plotting.save(fig, out, "x")

    a, b = draw(tmp_path / "a"), draw(tmp_path / "b")
    assert [p.name for p in a] == ["x.png", "x.pdf"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
