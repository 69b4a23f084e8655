"""soap-lab: a small, exact reference library for Shampoo, Adafactor, Adafactor-in-eigenbasis and SOAP.

Paper: Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam" (arXiv 2409.11321).

    from soap_lab import SOAP, Shampoo, Adafactor, EigenAdafactor
"""
from .optim.adafactor import Adafactor, EigenAdafactor
from .optim.shampoo import Shampoo
from .optim.soap import SOAP

__version__ = "0.1.0"
__all__ = ["SOAP", "Shampoo", "Adafactor", "EigenAdafactor", "__version__"]
