"""scripts/mode_collapse_study.py end to end on the ring, at a size a test affords."""
import importlib.util
import os

from conftest import REPO


def _study():
    spec = importlib.util.spec_from_file_location(
        "mode_collapse_study", os.path.join(REPO, "scripts", "mode_collapse_study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_study_trains_the_requested_seeds_and_appends_a_table(tmp_path, capsys):
    out = tmp_path / "study.md"
    args = ["--datasets", "ring", "--variants", "gan", "--seeds", "2", "--first_seed", "3",
            "--steps", "50", "--out", str(out)]
    assert _study().main(args) == 0
    printed = capsys.readouterr().out
    assert "ring gan seed 3:" in printed and "ring gan seed 4:" in printed
    assert "seed 0:" not in printed
    table = out.read_text()
    row = next(line for line in table.splitlines() if line.startswith("| ring | gan |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2].endswith("/ 8")            # modes captured, mean +- std over the 2 seeds
    assert cells[6] in ("0/2", "1/2", "2/2")   # diverged runs out of 2
    assert "published: PacGAN2" in table
