"""soap_lab.plot_claims: the forest plot of the seeded claims, from rows with known answers."""
import pytest

from soap_lab import ablations, figures, plot_claims, seeded_claims
from test_seeded_claims import F, _frame, _timing


def _rows():
    df = _frame()
    return (seeded_claims.qr_vs_eigh(df) + seeded_claims.variants(df, F) + seeded_claims.efficiency_claims(df, F)
            + seeded_claims.wallclock_claims(df, F, _timing([1.2, 1.21, 1.19], [0.9, 0.9, 0.91])))


def test_every_row_carries_its_claims_boundary():
    rows = _rows()
    assert {r["kind"] for r in rows} == {"equal", "less", "greater"}
    assert [r["margin"] for r in rows if "wall-clock than AdamW" in r["claim"]] == [0.35]


def test_forest_plot_draws_loss_and_saving_panels(tmp_path):
    paths = plot_claims.plot_claims_seeded(_rows(), tmp_path)
    assert [p.name for p in paths] == ["claims_seeded.png", "claims_seeded.pdf"]
    assert all(p.stat().st_size > 0 for p in paths)
    again = plot_claims.plot_claims_seeded(_rows(), tmp_path / "again")
    assert again[0].read_bytes() == paths[0].read_bytes()  # deterministic: `make figures` leaves the tree alone


def test_labels_say_which_batches_a_growth_claim_compares():
    row = {"claim": "SOAP's step saving grows with batch size (saved(128) − saved(8) > 0)",
           "baseline": "steps, batch 128 vs 8"}
    assert plot_claims._label(row) == "SOAP's step saving grows with batch size (steps, batch 8 → 128)"
    vs_shampoo = {"claim": "SOAP needs fewer steps than Shampoo at batch 8 (saved > 0)",
                  "baseline": "steps vs Shampoo, batch 8"}
    assert plot_claims._label(vs_shampoo) == "SOAP needs fewer steps than Shampoo at batch 8"
    assert plot_claims._label({"claim": "QR refresh as good as eigh (abs(…) < 0.02)", "f": 3}).endswith("f = 3")


def test_no_stored_claims_is_a_one_line_missing_results(tmp_path):
    with pytest.raises(ablations.MissingResults, match="freq_study --arms others"):
        plot_claims.plot_claims_seeded([], tmp_path)
    with pytest.raises(ablations.MissingResults, match="freq_study --arms others"):
        figures.draw("claims_seeded", tmp_path / "runs", tmp_path / "figs")
