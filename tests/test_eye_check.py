"""experiments/eye_check.py: the designs read back from fig. 5, its measures and the check of the labelled figure."""
import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from common.checkpoint import write_json
from common.errors import ConfigError, RunError
from common.figures import save_grid
from experiments.eye_check import (
    ANSWERS,
    EyeCheckConfig,
    auc,
    blind_answers,
    blind_report,
    blind_sheet,
    cohen_kappa,
    figure_tiles,
    figures_ordered,
    label_sets,
    measure_sets,
    open_figures,
    sets_report,
    silhouette,
    wholeness,
    write_sheet,
)


def write_figure(run, rows, size=16, k=3):
    """A fig. 5 as pm/figures.py writes it: per row k real images then k generated ones, captioned."""
    torch.manual_seed(0)
    images = (torch.randint(0, 256, (rows * 2 * k, 3, size, size)).float() / 127.5 - 1)
    save_grid(run / "personal_design.png", images, 2 * k, [f"x={i}" for i in range(len(images))])
    queries = [{"category": row % 2, "real": [{"item": i} for i in range(k)]} for row in range(rows)]
    write_json(run / "personal_design.json", {"queries": queries})
    return images.view(rows, 2 * k, 3, size, size)[:, k:].flatten(0, 1)


def two_figures(tmp_path):
    """(run, labels, stages, designs, categories) of two labelled figures of 2 rows, as open_figures gives them."""
    figures = []
    for name in ("a", "b"):
        write_figure(tmp_path / name, rows=2)
        designs, categories = figure_tiles(tmp_path / name, 16)
        figures.append((tmp_path / name, [1, 1, 1, 0, 0, 0], SimpleNamespace(designer=SimpleNamespace(image_size=16)),
                        designs, categories))
    return figures


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
        open_figures(EyeCheckConfig(labels=str(tmp_path / "labels.json")))


@pytest.mark.parametrize("content", [[1, 2], {"figures": {}}, {"figures": {"fig": {"sha256": "0", "labels": [1]}}},
                                     {"figures": {"fig": {"made_by": "x", "sha256": "0", "labels": [2]}}}])
def test_a_malformed_labels_file_is_refused_in_one_line(tmp_path, content):
    (tmp_path / "labels.json").write_text(json.dumps(content))
    with pytest.raises(RunError, match="is not a labels file"):
        open_figures(EyeCheckConfig(labels=str(tmp_path / "labels.json")))


def test_the_blind_sheet_holds_every_design_once_and_a_real_item_per_row_in_a_fixed_shuffle(tmp_path):
    figures = two_figures(tmp_path)
    tiles, key = blind_sheet(figures)
    assert len(tiles) == 12 + 4 and sorted(place for place, _, _ in key if place is not None) == list(range(12))
    assert [(category, figure) for place, category, figure in key if place is None] != [(0, 0), (1, 0), (0, 1), (1, 1)]
    for tile, (place, _, figure) in zip(tiles, key):
        if place is not None:   # a design's tile is that design
            torch.testing.assert_close(tile, figures[figure][3][place - 6 * figure])
    again, same_key = blind_sheet(figures)
    assert torch.equal(again, tiles) and same_key == key
    assert write_sheet(tmp_path / "sheet.png", tiles) == write_sheet(tmp_path / "again.png", again)


def test_blind_answers_are_refused_in_one_line_unless_one_per_tile_of_this_sheet(tmp_path):
    path = tmp_path / "blind.json"
    numbered = {str(n): "dress" for n in range(1, 5)}
    for content, match in [({"sheet_sha256": "s", "answers": ["dress"] * 3}, "is not a blind answers file for 4"),
                           ({"sheet_sha256": "s", "answers": {**numbered, "5": "dress"}}, "not a blind"),
                           ({"sheet_sha256": "s", "answers": {**numbered, "4": "hat"}}, "not a blind"),
                           ({"sheet_sha256": "s", "answers": ["dress", "hat", "dress", "dress"]}, "not a blind"),
                           ({"sheet_sha256": "other", "answers": ["dress"] * 4}, "answers another sheet")]:
        path.write_text(json.dumps(content))
        with pytest.raises(RunError, match=match):
            blind_answers(path, "s", 4)
    path.write_text(json.dumps({"sheet_sha256": "s", "answers": ["dress"] * 4}))
    assert blind_answers(path, "s", 4) == ["dress"] * 4
    path.write_text(json.dumps({"sheet_sha256": "s", "answers": {**numbered, "2": "sandal"}}))
    assert blind_answers(path, "s", 4) == ["dress", "sandal", "dress", "dress"]


def test_the_blind_report_counts_named_garments_against_the_first_labels():
    # designs 0-2 of category 0 named as their garment, designs 3-5 of category 1 not; one real item of each category
    key = [(place, place // 3, 0) for place in range(6)] + [(None, 0, 0), (None, 1, 0)]
    answers = [ANSWERS[0]] * 3 + ["cannot tell"] * 3 + [ANSWERS[0], ANSWERS[2]]
    eye = torch.tensor([1, 1, 0, 0, 0, 0])
    scores = {"realism": torch.tensor([3.0, 2.0, 1.0, 0.5, 0.4, 0.3])}
    report = blind_report(answers, key, scores, eye, ["fig"])
    assert "real items named as their category 1 of 2" in report
    assert "designs named as a garment 3 of 6 (first labeller: 2 recognisable), as the garment of their category 3" \
        in report
    assert "agree on 5 of 6 designs" in report and "| realism | 1.000 | 1.000 |" in report
    assert "| fig | 6 | 2 | 3 | 3 |" in report


def test_cohen_kappa_is_one_for_equal_labels_and_zero_for_chance_agreement():
    labels = torch.tensor([1, 0, 1, 0])
    assert cohen_kappa(labels, labels) == pytest.approx(1.0)
    assert cohen_kappa(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0])) == pytest.approx(0.0)


def test_wholeness_is_one_for_one_silhouette_and_falls_with_the_fragments():
    images = torch.ones(3, 3, 8, 8)            # white
    images[0, :, 1:7, 2:6] = -1                # one dark garment
    images[1, :, 0:2, 0:2] = images[1, :, 5:7, 5:7] = -1   # two equal pieces apart
    images[1, 0, 6, 0] = -1                    # and a speck: 1 pixel of 9
    assert wholeness(images).tolist() == [1.0, 4 / 9, 0.0]     # nothing drawn: 0


def test_the_sets_report_fits_a_threshold_on_the_first_sets_and_checks_it_on_the_rest():
    labels = torch.tensor([1, 1, 0, 0])
    separating, random = torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([0.1, 0.9, 0.2, 0.8])
    rows = [(index, f"fig{index}", {"good": separating, "bad": random}, labels) for index in range(3)]
    table = sets_report(rows, fit_sets=2)
    good, bad = (line for line in table.splitlines() if line.startswith(("| good", "| bad")))
    assert good == "| good | 1.000 | 1.000 | 1.00 | 1.00 | 1.00 | 0.8 | 1.000 | 0.500 | 0 of 0 |"
    assert bad.startswith("| bad | 0.500 |") and "12 labels of 3 figures in 3 sets, 6 nameable" in table
    with pytest.raises(ConfigError, match="--fit-sets 3: give 1 to 2"):
        sets_report(rows, fit_sets=3)
    with pytest.raises(RunError, match="none of the labelled figures is made here"):
        sets_report([], fit_sets=2)


def test_the_combination_fitted_on_the_first_sets_sees_on_the_rest_what_neither_measure_sees_alone():
    generator = torch.Generator().manual_seed(0)
    rows = []
    for index in range(6):
        a, b = torch.rand(40, generator=generator), torch.rand(40, generator=generator)
        rows.append((index, f"fig{index}", {"a": a, "b": b}, (a + b > 1).long()))   # nameable: both together
    table = sets_report(rows, fit_sets=3)
    held_out_auc = {line.split(" | ")[0][2:]: float(line.split(" | ")[2]) for line in table.splitlines()
                    if line.startswith(("| a ", "| b ", "| combined "))}
    assert held_out_auc["combined"] > 0.97 and max(held_out_auc["a"], held_out_auc["b"]) < 0.9


def test_figures_are_ordered_alike_where_the_higher_mean_measure_has_more_named():
    named = lambda count: torch.tensor([1] * count + [0] * (4 - count))
    rows = [(0, "f1", {"m": torch.full((4,), 0.9)}, named(3)), (0, "f2", {"m": torch.full((4,), 0.5)}, named(1)),
            (0, "f3", {"m": torch.full((4,), 0.1)}, named(2)), (1, "g1", {"m": torch.full((4,), 0.1)}, named(4)),
            (1, "g2", {"m": torch.full((4,), 0.9)}, named(4))]
    assert figures_ordered(rows, "m", lambda i: True) == (2, 3)    # f1 > f2, f1 > f3 alike; f2, f3 not; g: a tie
    assert figures_ordered(rows, "m", lambda i: i == 1) == (0, 0)


@pytest.mark.parametrize("content", [{"sets": []}, {"sets": [1]}, {"sets": [{"figures": {"f": {"labels": [1]}}}]}])
def test_a_malformed_file_of_label_sets_is_refused_in_one_line(tmp_path, content):
    (tmp_path / "sets.json").write_text(json.dumps(content))
    with pytest.raises(RunError, match="is not a (file of label sets|labels file)"):
        label_sets(tmp_path / "sets.json")


def test_a_figure_not_made_stops_the_sets_unless_it_may_be_left_out(tmp_path):
    entry = {"made_by": "python pm/main.py --out F", "sha256": "0", "labels": [1, 0]}
    (tmp_path / "sets.json").write_text(json.dumps({"sets": [{"figures": {str(tmp_path / "absent"): entry}}]}))
    cfg = EyeCheckConfig(sets=str(tmp_path / "sets.json"))
    with pytest.raises(RunError, match="personal_design.png: make it with `python pm/main.py --out F`"):
        measure_sets(cfg)
    assert measure_sets(dataclasses.replace(cfg, skip_missing=True)) == ([], [(0, str(tmp_path / "absent"))])
