"""Fixtures of the model tests."""
import pytest

from tests.helpers.toy_models import register_toy_with_priors


@pytest.fixture(scope="module")
def toy(toy_dataset_root, tmp_path_factory):
    """The session toy dataset registered with its priors (tests/helpers/toy_models.py), plus ``batch_train`` and
    ``batch_test``: two train and two test images with at least 3 boxes each. Modules that need another toy dataset
    define their own ``toy``."""
    toy = register_toy_with_priors(toy_dataset_root, str(tmp_path_factory.mktemp("priors") / "priors.npz"))
    # Two train and two test images with at least 3 boxes each.
    toy.batch_train = [d for d in toy.train if len(d["annotations"]) >= 3][:2]
    toy.batch_test = [d for d in toy.test if len(d["annotations"]) >= 3][:2]
    assert len(toy.batch_train) == 2 and len(toy.batch_test) == 2
    return toy
