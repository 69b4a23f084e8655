"""``python -m soap_lab``: the command line (:mod:`soap_lab.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
