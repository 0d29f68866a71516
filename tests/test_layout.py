"""The rooms' layering, checked on the imports themselves (README, "How the code is laid out"):

- common/ imports no stage;
- a room opens an earlier stage only through that stage's run.py (a finished run, read-only) or its nets
  (model.py and what model.py builds on); never its config, training, command line or conversion modules;
  experiments/, which runs several stages, may use any module of an earlier room (it configures and trains them);
- a stage's run.py imports nothing of its own stage's training code.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("common", "convert", "dvbpr", "attention", "gan", "pm", "explain", "baselines", "tools",
         "experiments")   # earlier first
OPEN_TO_LATER_ROOMS = {"run", "model", "cnnf", "backbones"}
TRAINING_MODULES = {"train", "main", "tf_run", "sample"}


def imports(path):
    """The project modules that the file at `path` imports, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in ROOMS}


def violations(root=ROOT):
    """One line per import that breaks the layering, over every room's files under `root`."""
    found = []
    for room in ROOMS:
        for path in sorted((root / room).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            for module in sorted(imports(path)):
                target_room, _, target = module.partition(".")
                if target_room == room:
                    if path.name == "run.py" and target in TRAINING_MODULES:
                        found.append(f"{relative} imports {module}: a run.py reads runs, it never trains")
                    continue
                if ROOMS.index(target_room) > ROOMS.index(room):
                    found.append(f"{relative} imports {module}, a later room")
                elif target_room != "common" and room != "experiments":
                    if target.split(".")[0] not in OPEN_TO_LATER_ROOMS:
                        found.append(f"{relative} imports {module}: open an earlier stage through its run.py")
    return found


def test_every_room_keeps_to_the_layering():
    assert violations() == []


@pytest.mark.parametrize("room, line, expected", [
    ("baselines", "from dvbpr.train import train", "baselines/added.py imports dvbpr.train: open an earlier stage"),
    ("pm", "import gan.main", "pm/added.py imports gan.main: open an earlier stage"),
    ("gan", "from pm.design import Designer", "gan/added.py imports pm.design, a later room"),
    ("common", "from dvbpr.run import open_dvbpr_run", "common/added.py imports dvbpr.run, a later room"),
])
def test_a_violation_fails_the_check(tmp_path, room, line, expected):
    for name in ROOMS:
        (tmp_path / name).mkdir()
    (tmp_path / room / "added.py").write_text(line + "\n")
    assert [found for found in violations(tmp_path) if found.startswith(expected)] != []


def test_a_run_py_that_imports_training_code_fails_the_check(tmp_path):
    for name in ROOMS:
        (tmp_path / name).mkdir()
    (tmp_path / "gan" / "run.py").write_text("from gan.train import GANTraining\n")
    assert violations(tmp_path) == ["gan/run.py imports gan.train: a run.py reads runs, it never trains"]
