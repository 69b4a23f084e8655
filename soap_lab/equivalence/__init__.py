"""Claim 1 of the paper (§3): Shampoo with power ½ equals Adafactor in Shampoo's eigenbasis.

:mod:`.identities` states it as plain functions (float64); :mod:`.experiments` measures where it holds and what
breaks it (the exponent, the trace factor, a stale basis, the gap along training)."""
from .identities import (eigenbasis, gradient_factors, idealized_eigen_adafactor_update, idealized_shampoo_update,
                         relative_error, rotated_statistics)

__all__ = ["eigenbasis", "gradient_factors", "idealized_eigen_adafactor_update", "idealized_shampoo_update",
           "relative_error", "rotated_statistics"]
