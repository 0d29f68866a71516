"""tools/compare.py on two tiny DVBPR runs: the picture's lines, the table's numbers, and the runs it refuses."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from dvbpr.main import main as dvbpr_main
from tools.compare import main as compare_main


@pytest.fixture(scope="module")
def two_runs(catalogue, tmp_path_factory):
    """Two 2-epoch runs that differ in --lr (the second keeps its last epoch)."""
    folder = tmp_path_factory.mktemp("runs")
    for name, extra in (("fast", ["--lr", "0.01"]), ("slow", ["--lr", "0.001", "--select", "last"])):
        dvbpr_main(["--dataset", str(catalogue()), "--out", str(folder / name), "--image-size", "32", "--k", "8",
                    "--fc-width", "64", "--batch-size", "16", "--epochs", "2", "--device", "cpu", *extra])
    return [folder / "fast", folder / "slow"]


def read_json_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_picture_has_one_line_per_run_per_metric_and_a_star_on_the_kept_epoch(two_runs, tmp_path):
    figure, _ = compare_main([*map(str, two_runs), "--out", str(tmp_path)])
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["valid_auc", "test_auc", "valid_auc_cold", "test_auc_cold"]
    runs = [(read_json_lines(run / "metrics.jsonl"), json.loads((run / "results.json").read_text()))
            for run in two_runs]
    for ax in panels:
        assert len(ax.lines) == len(two_runs)
        for line, star, (records, results) in zip(ax.lines, ax.collections, runs):
            assert list(line.get_xdata()) == [r["epoch"] for r in records]
            np.testing.assert_array_equal(line.get_ydata(), [r[ax.get_title()] for r in records])
            assert star.get_offsets().tolist() == [[results["epoch"], results[ax.get_title()]]]
    labels = panels[0].get_legend_handles_labels()[1]
    assert labels == [f"{two_runs[0]}: lr=0.01, select=best-valid", f"{two_runs[1]}: lr=0.001, select=last"]
    width, height = figure.get_size_inches() * 110
    assert Image.open(tmp_path / "compare.png").size == (round(width), round(height))


def test_the_table_holds_each_runs_results_and_the_settings_that_differ(two_runs, tmp_path):
    _, table = compare_main([*map(str, two_runs), "--out", str(tmp_path), "--name", "two"])
    assert (tmp_path / "two.md").read_text() == table and (tmp_path / "two.png").is_file()
    lines = [line for line in table.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, metrics = rows[0], rows[2:2 + len(two_runs)]
    assert header == ["run", "kept epoch", "valid_auc", "valid_auc_cold", "test_auc", "test_auc_cold", "wall time"]
    for row, run in zip(metrics, two_runs):
        results = json.loads((run / "results.json").read_text())
        assert row[0] == str(run) and int(row[1]) == results["epoch"]
        assert [float(cell) for cell in row[2:6]] == [round(results[name], 4) for name in header[2:6]]
        assert row[6] == f"{results['wall_seconds']} s"
    settings = {row[0]: row[1:] for row in rows[2 + len(two_runs) + 2:]}
    assert settings == {"lr": ["0.01", "0.001"], "select": ["best-valid", "last"]}


def test_a_run_without_metrics_or_with_a_malformed_line_is_named_in_one_line(two_runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(two_runs[0], broken)
    (broken / "metrics.jsonl").unlink()
    with pytest.raises(SystemExit, match=f"^compare: {broken / 'metrics.jsonl'} is missing: give a finished run"):
        compare_main([str(two_runs[0]), str(broken), "--out", str(tmp_path / "out")])

    lines = (two_runs[0] / "metrics.jsonl").read_text().splitlines()
    (broken / "metrics.jsonl").write_text(f"{lines[0]}\n{lines[1][:-5]}\n")
    with pytest.raises(SystemExit) as refused:
        compare_main([str(broken), "--out", str(tmp_path / "out")])
    assert str(refused.value).startswith(f"compare: {broken / 'metrics.jsonl'}, line 2 is not valid JSON")
    assert "\n" not in str(refused.value) and not (tmp_path / "out").exists()

    (broken / "metrics.jsonl").write_text(f"{lines[0]}\n[1, 2]\n")
    with pytest.raises(SystemExit, match="line 2 holds a JSON list, not an object"):
        compare_main([str(broken)])


def test_files_over_the_budget_are_refused_before_they_are_parsed(two_runs, tmp_path, monkeypatch):
    monkeypatch.setattr("tools.compare.METRICS_BUDGET", 100)
    size = (two_runs[0] / "metrics.jsonl").stat().st_size
    with pytest.raises(SystemExit, match=f"metrics.jsonl is {size} bytes, more than the 100 read of it"):
        compare_main([str(two_runs[0]), "--out", str(tmp_path)])
