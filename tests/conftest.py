"""The tiny catalogues the tests share, each generated once per session; one thread per test worker."""
import os

import pytest
import torch

from common.catalogue.config import CatalogueConfig
from common.catalogue.generate import generate_catalogue


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory):
    """catalogue(num_users, num_items, image_size, name) -> the path of a procedural catalogue in the original
    layout, made once per session for each set of arguments (so modules asking for the same one share it)."""
    made = {}

    def make(num_users=12, num_items=240, image_size=32, name="Tiny"):
        key = (num_users, num_items, image_size, name)
        if key not in made:
            path = tmp_path_factory.mktemp("catalogue") / f"{name}.npy"
            made[key] = generate_catalogue(path, CatalogueConfig(num_users=num_users, num_items=num_items,
                                                                 image_size=image_size, image_source="procedural"))
        return made[key]
    return make


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):   # one of several workers, each on a core of its own
        os.environ["OMP_NUM_THREADS"] = "1"    # and the processes it starts, as runs compared with its own
        torch.set_num_threads(1)
