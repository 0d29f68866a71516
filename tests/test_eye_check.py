"""experiments/eye_check.py: the designs read back from fig. 5, its measures and the check of the labelled figure."""
import json

import pytest
import torch

from common.checkpoint import write_json
from common.errors import RunError
from common.figures import save_grid
from experiments.eye_check import EyeCheckConfig, auc, figure_tiles, measure, silhouette


def write_figure(run, rows, size=16, k=3):
    """A fig. 5 as pm/figures.py writes it: per row k real images then k generated ones, captioned."""
    torch.manual_seed(0)
    images = (torch.randint(0, 256, (rows * 2 * k, 3, size, size)).float() / 127.5 - 1)
    save_grid(run / "personal_design.png", images, 2 * k, [f"x={i}" for i in range(len(images))])
    queries = [{"category": row % 2, "real": [{"item": i} for i in range(k)]} for row in range(rows)]
    write_json(run / "personal_design.json", {"queries": queries})
    return images.view(rows, 2 * k, 3, size, size)[:, k:].flatten(0, 1)


def test_the_designs_read_back_from_the_figure_are_the_generated_tiles(tmp_path):
    generated = write_figure(tmp_path, rows=2)
    designs, categories = figure_tiles(tmp_path, 16)
    assert designs.shape == generated.shape and categories == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(designs, generated, atol=1 / 127.5, rtol=0)   # the PNG's 8 bits


def test_silhouette_is_one_for_a_real_items_shape_and_low_for_a_square():
    real = torch.ones(2, 3, 8, 8)
    real[0, :, 2:6, 3:5] = -1     # a narrow dark item on white
    real[1, :, 1:3, 1:7] = -1
    square = -torch.ones(1, 3, 8, 8)
    assert silhouette(real[:1].clone(), real).item() == 1.0
    assert silhouette(square, real).item() == pytest.approx(12 / 64)


def test_auc_counts_pairs_and_halves_ties():
    labels = torch.tensor([1, 1, 0, 0])
    assert auc(torch.tensor([3.0, 4.0, 1.0, 2.0]), labels) == 1.0
    assert auc(torch.tensor([1.0, 2.0, 3.0, 4.0]), labels) == 0.0
    assert auc(torch.tensor([1.0, 1.0, 1.0, 1.0]), labels) == 0.5


def test_a_figure_other_than_the_labelled_one_is_refused(tmp_path):
    write_figure(tmp_path / "fig", rows=1)
    labels = {"figures": {str(tmp_path / "fig"): {"made_by": "python pm/main.py --out X", "sha256": "0" * 64,
                                                  "labels": [1, 0, 1]}}}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(RunError, match="personal_design.png is not the figure that was labelled"):
        measure(EyeCheckConfig(labels=str(tmp_path / "labels.json")))


@pytest.mark.parametrize("content", [[1, 2], {"figures": {}}, {"figures": {"fig": {"sha256": "0", "labels": [1]}}},
                                     {"figures": {"fig": {"made_by": "x", "sha256": "0", "labels": [2]}}}])
def test_a_malformed_labels_file_is_refused_in_one_line(tmp_path, content):
    (tmp_path / "labels.json").write_text(json.dumps(content))
    with pytest.raises(RunError, match="is not a labels file"):
        measure(EyeCheckConfig(labels=str(tmp_path / "labels.json")))
