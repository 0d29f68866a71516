"""experiments/eye_pair.py: a lever's fig. 5s against the base's on one blind sheet, and the labellers' scores."""
import json

import pytest
import torch

from common.errors import ConfigError, RunError
from experiments.eye_check import ANSWERS, figure_tiles
from experiments.eye_pair import figure_order, labels_of, main, pair_sheet, read_answers, read_key, score
from tests.test_eye_check import write_figure

COMMITTED = "docs/eye_half_chroma"


def two_pairs(tmp_path):
    """[(arm, folder)] of two base and two lever figures of 2 rows (categories 0, 1) and 3 designs a row."""
    for name in ("b1", "l1", "b2", "l2"):
        write_figure(tmp_path / name, rows=2)
    return figure_order([str(tmp_path / "b1"), str(tmp_path / "b2")], [str(tmp_path / "l1"), str(tmp_path / "l2")])


def test_the_figures_are_taken_in_pairs_and_unpaired_ones_refused():
    assert figure_order(["b1", "b2"], ["l1", "l2"]) == [("base", "b1"), ("lever", "l1"), ("base", "b2"),
                                                        ("lever", "l2")]
    for base, lever in [(["b1", "b2"], ["l1"]), (None, ["l1"]), ([], [])]:
        with pytest.raises(ConfigError, match="as many lever figures as base figures"):
            figure_order(base, lever)


def test_the_sheet_holds_every_design_once_and_the_base_figures_real_items_in_a_fixed_shuffle(tmp_path):
    figures = two_pairs(tmp_path)
    tiles, key = pair_sheet(figures, [16] * 4, shuffle_seed=0)
    assert len(tiles) == 4 * 6 + 2 * 2
    for folder in (f for _, f in figures):
        assert sorted(place for _, f, place, _ in key if f == folder and place is not None) == list(range(6))
    assert {arm for arm, _, place, _ in key if place is None} == {"base"}
    for tile, (_, folder, place, _) in zip(tiles, key):
        designs, _ = figure_tiles(tmp_path / folder.split("/")[-1], 16)
        if place is not None:
            torch.testing.assert_close(tile, designs[place])
    again, same_key = pair_sheet(figures, [16] * 4, shuffle_seed=0)
    assert torch.equal(again, tiles) and same_key == key
    _, other_key = pair_sheet(figures, [16] * 4, shuffle_seed=1)
    assert other_key != key


def answers_file(path, digest, answers):
    path.write_text(json.dumps({"sheet_sha256": digest, "answers": {str(n + 1): a for n, a in enumerate(answers)}}))
    return str(path)


def test_a_labeller_who_names_every_base_design_and_no_lever_design_scores_minus_all(tmp_path):
    figures = two_pairs(tmp_path)
    _, key = pair_sheet(figures, [16] * 4, shuffle_seed=0)
    answers = [ANSWERS[category] if arm == "base" else "cannot tell" for arm, _, _, category in key]
    labels, real = labels_of(answers, key)
    assert real == [4, 4] and all(sum(labels[f]) == (6 if arm == "base" else 0) for arm, f in figures)
    report = score([answers_file(tmp_path / "a.json", "s", answers)], "s", key)
    assert "| a.json | 4 of 4 | 6 / 6 = 12 | 0 / 0 = 0 | -12 | 0 / 0 |" in report
    assert "-12.00 on average over 1 labellers" in report


def test_answers_are_refused_in_one_line_unless_one_per_tile_of_the_keys_sheet(tmp_path):
    path = tmp_path / "a.json"
    for answers, digest, match in [(["dress"] * 3, "s", "not a blind answers file for 4 tiles"),
                                   (["dress", "hat", "dress", "dress"], "s", "not a blind answers file"),
                                   (["dress"] * 4, "other", "answers another sheet")]:
        answers_file(path, digest, answers)
        with pytest.raises(RunError, match=match):
            read_answers(path, "s", 4)
    assert read_answers(answers_file(path, "s", ["dress"] * 4), "s", 4) == ["dress"] * 4


@pytest.mark.parametrize("content", [{"key": []}, {"sheet_sha256": "s", "key": [["other", "f", 0, 1]]},
                                     {"sheet_sha256": "s", "key": [["base", "f", 0, 6]]}, [1, 2]])
def test_a_malformed_key_is_refused_in_one_line(tmp_path, content):
    (tmp_path / "key.json").write_text(json.dumps(content))
    with pytest.raises(RunError, match="is not a sheet key"):
        read_key(tmp_path / "key.json")


def test_the_committed_answers_give_the_committed_labels_of_the_half_chroma_rule(tmp_path):
    digest, key = read_key(f"{COMMITTED}/sheet.json")
    labelled = json.loads(open("docs/eye_labels_half_chroma.json").read())["sets"]
    for one in labelled:
        labels, _ = labels_of(read_answers(f"{COMMITTED}/labeller_{one['labeller']}.json", digest, len(key)), key)
        assert labels == {figure: entry["labels"] for figure, entry in one["figures"].items()}
    main(["--key", f"{COMMITTED}/sheet.json", "--out", str(tmp_path / "score.md"), "--answers",
          *(f"{COMMITTED}/labeller_{n}.json" for n in (27, 28, 29, 30))])
    assert "-5.25 on average over 4 labellers" in (tmp_path / "score.md").read_text()


def test_answers_without_a_key_are_refused_in_one_line():
    with pytest.raises(SystemExit, match="eye_pair: --answers: give the sheet's --key"):
        main(["--answers", "a.json"])
