"""experiments/eye_pair.py: a lever's fig. 5s against the base's (or against the real items of the same rows) on
one blind sheet, and the labellers' scores."""
import json
from pathlib import Path

import pytest
import torch

from common.errors import ConfigError, RunError
from experiments.eye_check import ANSWERS, blind_answers, figure_tiles
from experiments.eye_pair import (
    between_sheets,
    bootstrap_interval,
    figure_order,
    image_size,
    labels_of,
    main,
    pair_sheet,
    read_key,
    score,
    sheet_labels,
    tile_labels,
)
from tests.test_eye_check import write_figure

COMMITTED = "docs/eye_half_chroma"


def figures_in(tmp_path, names):
    for name in names:
        write_figure(tmp_path / name, rows=2)   # categories 0 and 1, 3 real items and 3 designs a row
    return [str(tmp_path / name) for name in names]


def test_the_figures_are_taken_in_pairs_and_unpaired_ones_refused():
    assert figure_order(["b1", "b2"], ["l1", "l2"]) == [("base", "b1"), ("lever", "l1"), ("base", "b2"),
                                                        ("lever", "l2")]
    assert figure_order(["b1", "b2"], None, real_items=True) == [("base", "b1"), ("base", "b2")]
    for base, lever in [(["b1", "b2"], ["l1"]), (None, ["l1"]), ([], [])]:
        with pytest.raises(ConfigError, match="as many lever figures as base figures"):
            figure_order(base, lever)
    with pytest.raises(ConfigError, match="--real-items: give --base figures and no --lever"):
        figure_order(["b1"], ["l1"], real_items=True)


def test_the_sheet_holds_every_design_once_and_the_base_figures_real_items_in_a_fixed_shuffle(tmp_path):
    figures = figure_order(figures_in(tmp_path, ["b1", "b2"]), figures_in(tmp_path, ["l1", "l2"]))
    tiles, key = pair_sheet(figures, [16] * 4, shuffle_seed=0)
    assert len(tiles) == 4 * 6 + 2 * 2
    for _, folder in figures:
        assert sorted(t["place"] for t in key if t["figure"] == folder and t["place"] is not None) == list(range(6))
    assert {t["arm"] for t in key if t["place"] is None} == {"base"}
    for tile, entry in zip(tiles, key):
        if entry["place"] is not None:   # a design's tile is that design, in its row
            designs, categories = figure_tiles(tmp_path / entry["figure"].split("/")[-1], 16)
            torch.testing.assert_close(tile, designs[entry["place"]])
            assert entry["row"] == entry["place"] // 3 and entry["category"] == categories[entry["place"]]
    again, same_key = pair_sheet(figures, [16] * 4, shuffle_seed=0)
    assert torch.equal(again, tiles) and same_key == key
    assert pair_sheet(figures, [16] * 4, shuffle_seed=1)[1] != key


def test_with_real_items_the_sheet_holds_every_real_item_of_each_row_beside_its_designs(tmp_path):
    figures = figure_order(figures_in(tmp_path, ["b1", "b2"]), None, real_items=True)
    tiles, key = pair_sheet(figures, [16] * 2, shuffle_seed=0, real_items=True)
    assert len(tiles) == 2 * (6 + 6) and all(t["place"] is not None for t in key)
    for tile, entry in zip(tiles, key):
        if entry["arm"] == "real":
            real, categories = figure_tiles(tmp_path / entry["figure"].split("/")[-1], 16,
                                            real_column=entry["place"] % 3)
            torch.testing.assert_close(tile, real[entry["row"]])
            assert entry["row"] == entry["place"] // 3 and entry["category"] == categories[entry["row"]]
    assert sorted((t["figure"], t["place"]) for t in key if t["arm"] == "real") == \
        sorted((t["figure"], t["place"]) for t in key if t["arm"] == "base")


def answers_file(path, digest, answers):
    path.write_text(json.dumps({"sheet_sha256": digest, "answers": {str(n + 1): a for n, a in enumerate(answers)}}))
    return str(path)


def test_a_labeller_who_names_every_base_design_and_no_lever_design_scores_minus_all(tmp_path):
    figures = figure_order(figures_in(tmp_path, ["b1", "b2"]), figures_in(tmp_path, ["l1", "l2"]))
    _, key = pair_sheet(figures, [16] * 4, shuffle_seed=0)
    answers = [ANSWERS[t["category"]] if t["arm"] == "base" else "cannot tell" for t in key]
    labels = tile_labels(answers, key)
    named, right = labels_of(labels["named a garment"], key), labels_of(labels["named as their category"], key)
    assert all(sum(named[figure]) == (6 if figure[0] == "base" else 0) for figure in figures) and named == right
    files = [answers_file(tmp_path / "a.json", "s", answers)]
    report = score(files, sheet_labels(files, "s", key), key)
    assert "| a.json | 4 of 4 | 6 / 6 = 12 | 0 / 0 = 0 | -12 | 12 / 0 | 0 / 0 |" in report
    assert "-12.00 on average over 1 labellers" in report
    assert "Share named a garment, lever minus base, over the labellers: -1.000 (95% interval -1.000 to -1.000, " \
           "a bootstrap over the 4 rows" in report


def test_designs_named_half_as_often_as_the_real_items_beside_them_score_minus_a_half(tmp_path):
    figures = figure_order(figures_in(tmp_path, ["b1", "b2"]), None, real_items=True)
    _, key = pair_sheet(figures, [16] * 2, shuffle_seed=0, real_items=True)
    # every real item named as its category; the designs of row 0 of each figure too, those of row 1 called sandals
    answers = [ANSWERS[t["category"]] if t["arm"] == "real" or t["row"] == 0 else "cannot tell" for t in key]
    files = [answers_file(tmp_path / "a.json", "s", answers)]
    report = score(files, sheet_labels(files, "s", key), key)
    assert "| a.json | - | 3 / 3 = 6 | 6 / 6 = 12 | +6 | 6 / 12 | 0 / 0 |" in report
    assert "Share named a garment, real minus base, over the labellers: +0.500 (95% interval +0.000 to +1.000" \
        in report
    assert "| 0 (long-sleeved top) | 6 of 6 | 6 of 6 | 6 of 6 | 6 of 6 |" in report
    assert "| 1 (T-shirt or tank top) | 0 of 6 | 6 of 6 | 0 of 6 | 6 of 6 |" in report


def test_the_bootstrap_interval_holds_the_mean_and_narrows_with_more_rows():
    mean, low, high = bootstrap_interval([0.0, 1.0] * 5)
    assert mean == 0.5 and low < 0.5 < high
    _, wide_low, wide_high = bootstrap_interval([0.0, 1.0])
    assert wide_high - wide_low > high - low
    assert bootstrap_interval([0.25] * 7) == pytest.approx((0.25, 0.25, 0.25))


TILE = {"arm": "base", "figure": "f", "place": 0, "row": 0, "category": 1}


@pytest.mark.parametrize("content", [
    {"key": [TILE, {**TILE, "arm": "real"}]}, [1, 2], {"sheet_sha256": "s", "key": [TILE, {**TILE, "arm": "other"}]},
    {"sheet_sha256": "s", "key": [TILE, {**TILE, "arm": "real", "category": 6}]},
    {"sheet_sha256": "s", "key": [TILE, {**TILE, "arm": "lever"}, {**TILE, "arm": "real"}]},
    {"sheet_sha256": "s", "key": [TILE, {**TILE, "arm": "real", "row": None}]}])
def test_a_malformed_key_is_refused_in_one_line(tmp_path, content):
    (tmp_path / "key.json").write_text(json.dumps(content))
    with pytest.raises(RunError, match="is not a sheet key"):
        read_key(tmp_path / "key.json")


def test_the_committed_answers_give_the_committed_labels_of_the_half_chroma_rule(tmp_path):
    digest, key = read_key(f"{COMMITTED}/sheet.json")
    for one in json.loads(open("docs/eye_labels_half_chroma.json").read())["sets"]:
        answers = blind_answers(f"{COMMITTED}/labeller_{one['labeller']}.json", digest, len(key))
        named = labels_of(tile_labels(answers, key)["named a garment"], key)
        assert {figure: labels for (_, figure), labels in named.items()} == \
            {figure: entry["labels"] for figure, entry in one["figures"].items()}
    main(["--key", f"{COMMITTED}/sheet.json", "--out", str(tmp_path / "score.md"), "--answers",
          *(f"{COMMITTED}/labeller_{n}.json" for n in (27, 28, 29, 30))])
    assert "-5.25 on average over 4 labellers" in (tmp_path / "score.md").read_text()


def test_the_committed_answers_give_the_twelfth_rules_comparison_of_the_ex_post_vae_and_the_demo(tmp_path):
    ours, our_labellers = "docs/eye_real_vaep", range(115, 121)
    theirs, their_labellers = "docs/eye_real_sn_i", range(121, 127)
    main(["--key", f"{ours}/sheet.json", "--answers", *(f"{ours}/labeller_{n}.json" for n in our_labellers),
          "--against-key", f"{theirs}/sheet.json", "--against-answers",
          *(f"{theirs}/labeller_{n}.json" for n in their_labellers), "--out", str(tmp_path / "score.md")])
    scores = (tmp_path / "score.md").read_text()
    assert "+0.117 (95% interval +0.042 to +0.198, a bootstrap over the 36 rows" in scores
    assert "per row: -0.103 (95% interval -0.199 to -0.009, a bootstrap over the 36 rows)" in scores


def test_answers_without_a_key_are_refused_in_one_line():
    with pytest.raises(SystemExit, match="eye_pair: --answers: give the sheet's --key"):
        main(["--answers", "a.json"])


def test_two_sheets_of_the_same_rows_compare_row_by_row_and_other_rows_are_refused(tmp_path):
    figures = figure_order(figures_in(tmp_path, ["b1", "b2"]), None, real_items=True)
    _, key = pair_sheet(figures, [16] * 2, shuffle_seed=0, real_items=True)
    _, other_key = pair_sheet(figures, [16] * 2, shuffle_seed=1, real_items=True)
    every_one = tile_labels([ANSWERS[t["category"]] for t in key], key)   # designs as nameable as real items
    no_design = tile_labels([ANSWERS[t["category"]] if t["arm"] == "real" else "cannot tell" for t in other_key],
                            other_key)
    lines = between_sheets(([every_one], key), ([no_design], other_key))
    assert lines[0].startswith("Share named a garment, (real minus base) on this sheet minus the same on the --against "
                               "sheet, per row: -1.000 (95% interval -1.000 to -1.000, a bootstrap over the 4 rows)")
    fewer_rows = [t for t in other_key if t["row"] == 0]
    with pytest.raises(RunError, match="do not hold the same rows"):
        between_sheets(([every_one], key), ([tile_labels(["dress"] * len(fewer_rows), fewer_rows)], fewer_rows))


def test_a_figure_whose_settings_name_no_gan_run_is_refused_in_one_line(tmp_path):
    (tmp_path / "figures_config.json").write_text(json.dumps({"dvbpr_run": "runs/dvbpr"}))
    with pytest.raises(RunError, match="names no GAN run"):
        image_size(tmp_path)


def test_the_command_writes_a_sheet_its_key_and_brief_that_its_scoring_reads_back(tmp_path, monkeypatch):
    monkeypatch.setattr("experiments.eye_pair.image_size", lambda run: 16)   # the figures' GAN, not made here
    base = figures_in(tmp_path, ["b1", "b2"])
    sheet = tmp_path / "out" / "sheet.png"
    main(["--real-items", "--base", *base, "--sheet", str(sheet)])
    digest, key = read_key(sheet.with_suffix(".json"))
    assert Path(sheet).is_file() and len(key) == 24 and {t["arm"] for t in key} == {"base", "real"}
    brief = sheet.with_suffix(".md").read_text()
    assert digest in brief and "from 1 to 24" in brief and str(sheet) in brief
    every_one = answers_file(tmp_path / "a.json", digest, [ANSWERS[t["category"]] for t in key])
    main(["--key", str(sheet.with_suffix(".json")), "--answers", every_one, "--out", str(tmp_path / "score.md")])
    assert "| a.json | - | 6 / 6 = 12 | 6 / 6 = 12 | +0 |" in (tmp_path / "score.md").read_text()
    for half in (["--against-key", str(sheet.with_suffix(".json"))], ["--against-answers", every_one]):
        with pytest.raises(SystemExit, match="eye_pair: --against-key and --against-answers: give both"):
            main(["--key", str(sheet.with_suffix(".json")), "--answers", every_one, *half])
    main(["--key", str(sheet.with_suffix(".json")), "--answers", every_one, "--out", str(tmp_path / "both.md"),
          "--against-key", str(sheet.with_suffix(".json")), "--against-answers", every_one])
    assert "on the --against sheet, per row: +0.000" in (tmp_path / "both.md").read_text()
