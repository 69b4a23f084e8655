import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Every test starts from the same global RNG state, so no result depends on which tests ran before it."""
    torch.manual_seed(0)
    yield


# Property tests explore random examples locally; in CI (CI=true) the examples are derived from the test itself,
# so a submission's result does not depend on the draw.
try:
    import os

    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, deadline=None)
    if os.environ.get("CI"):
        settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny models gain nothing from a second thread, and on a shared machine
    two threads per process cost a lot. Modules that train use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
