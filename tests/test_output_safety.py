"""Output folders a run must not harm: only what this tool's own earlier run wrote there (its marker's manifest),
unchanged since, is ever replaced; an output folder that is also an input, a symbolic link or a mount point is
refused before anything is written; and every refusal is one line whose advice works when followed."""

import errno
import json
import os
import shutil
from functools import partial
from pathlib import Path

import pytest
from helpers import adapt_argv, assert_usage_error, flags

from zerosiam_hf.commands import adapt, evaluate, export_model
from zerosiam_hf.errors import RunStopped
from zerosiam_hf.records import write_json
from zerosiam_hf.staging import MARKER_FILE, staged_output, staging_path


FAST = flags(protocol="offline", max_steps=1)


def tree(folder: Path) -> dict:
    """Every file under `folder` by its relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def method(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["config"]["ZeroSiamConfig"]["method"]


def test_overwrite_replaces_only_files_its_own_run_wrote_and_left_unchanged(
    capsys, tiny_model_dir, problems_file, tmp_path
):
    # A user's model with a run.json in it: no marker, so nothing in it is the tool's.
    mymodel = tmp_path / "mymodel"
    shutil.copytree(tiny_model_dir, mymodel)
    (mymodel / "run.json").write_text("{}")
    before = tree(mymodel)
    call = partial(adapt.main, adapt_argv(tiny_model_dir, problems_file, mymodel, *FAST, "--overwrite", "true"))
    line = assert_usage_error(capsys, call, f"--output_dir {mymodel} was not made by zerosiam-hf")
    shown = "chat_template.jinja, config.json, generation_config.json, model.safetensors, run.json and 2 more"
    assert f"holds {shown};" in line
    assert tree(mymodel) == before and not staging_path(str(mymodel)).exists()

    # evaluate.py into a folder of the user's own eval.json, predictions and README.
    mine = tmp_path / "myeval"
    mine.mkdir()
    for name in ("eval.json", "predictions-base.jsonl", "README.md"):
        (mine / name).write_text("mine")
    argv = flags(model=tiny_model_dir, dataset=problems_file, max_new_tokens=4, output_dir=mine, overwrite="true")
    assert_usage_error(capsys, partial(evaluate.main, argv), "holds README.md, eval.json, predictions-base.jsonl;")
    assert tree(mine) == {name: b"mine" for name in ("README.md", "eval.json", "predictions-base.jsonl")}

    # export_model into a folder of the user's own export.json.
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "export.json").write_text("mine")
    argv = ["--model", tiny_model_dir, "--output_dir", str(tmp_path / "export"), "--overwrite", "true"]
    assert_usage_error(capsys, partial(export_model.main, argv), "and holds export.json; a run never deletes")
    assert tree(tmp_path / "export") == {"export.json": b"mine"}

    # Notes a user appends to a run's own README.md: that file is the user's now.
    run = tmp_path / "run"
    argv = adapt_argv(tiny_model_dir, problems_file, run, *FAST)
    adapt.main(argv)
    with open(run / "README.md", "a") as handle:
        handle.write("\nmy notes\n")
    before = tree(run)
    expected = f"--output_dir {run} holds README.md, which changed since the run wrote it; a run never deletes"
    for extra in ([], ["--method", "tent", "--overwrite", "true"]):  # a same-settings rerun, and a replacement
        assert_usage_error(capsys, partial(adapt.main, argv + extra), expected)
        assert tree(run) == before and not staging_path(str(run)).exists()


def test_a_run_published_before_its_files_were_hashed_is_still_rerun_and_replaced(
    capsys, tiny_model_dir, problems_file, tmp_path
):
    run = tmp_path / "run"
    argv = adapt_argv(tiny_model_dir, problems_file, run, *FAST)

    def as_published_before_hashes():
        """The marker as the previous version wrote it at publish: top-level names only, written last."""
        marker = json.loads((run / MARKER_FILE).read_text())
        del marker["sha256"]
        write_json(run / MARKER_FILE, marker)

    adapt.main(argv)
    as_published_before_hashes()
    adapt.main(argv)  # a same-settings rerun replaces it
    assert "sha256" in json.loads((run / MARKER_FILE).read_text())
    as_published_before_hashes()
    adapt.main(argv + ["--method", "tent", "--overwrite", "true"])
    assert method(run) == "tent" and not run.with_name("run.old").exists()

    # A listed file newer than that marker was changed after the run: it is the user's.
    as_published_before_hashes()
    later = (run / MARKER_FILE).stat().st_mtime_ns + 10**9
    os.utime(run / "README.md", ns=(later, later))
    call = partial(adapt.main, argv + ["--overwrite", "true"])
    assert_usage_error(capsys, call, "holds README.md, which changed since the run wrote it")
    assert method(run) == "tent"


def test_an_output_dir_that_is_holds_or_is_inside_an_input_is_refused(capsys, tiny_model_dir, problems_file, tmp_path):
    exported = tmp_path / "E"
    export_model.main(["--model", tiny_model_dir, "--output_dir", str(exported)])
    adapter = tmp_path / "X"
    adapt.main(adapt_argv(tiny_model_dir, problems_file, adapter, *FAST))
    data = tmp_path / "data"
    data.mkdir()
    dataset = shutil.copy(problems_file, data / "problems.jsonl")
    before = {folder: tree(folder) for folder in (exported, adapter, data)}

    evaluate_argv = flags(model=tiny_model_dir, dataset=problems_file, adapter=adapter, max_new_tokens=4)
    cases = [
        (adapt, adapt_argv(exported, problems_file, exported), f"--output_dir {exported} is the same folder as --mo"),
        (adapt, adapt_argv(exported, problems_file, exported / "run"), f"--output_dir {exported / 'run'} is inside"),
        (adapt, adapt_argv(tiny_model_dir, dataset, data), f"--output_dir {data} holds --dataset {dataset}"),
        (evaluate, [*evaluate_argv, "--output_dir", str(adapter)], "is the same folder as --adapter"),
        (evaluate, [*evaluate_argv, "--output_dir", str(adapter / "eval")], "is inside --adapter"),
        (export_model, ["--model", str(exported), "--output_dir", str(exported / "copy")], "is inside --model"),
    ]
    for command, argv, expected in cases:
        line = assert_usage_error(capsys, partial(command.main, [*argv, "--overwrite", "true"]), expected)
        assert line.endswith("a run never writes where it reads its inputs: choose another --output_dir.")
    assert {folder: tree(folder) for folder in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["E", "X", "data", "problems.jsonl"]


def test_a_symlinked_output_dir_is_refused_and_its_resolved_path_works(capsys, tiny_model_dir, tmp_path):
    config = {"Section": {"value": 1}}
    real = tmp_path / "real"
    with staged_output(str(real), config) as folder:
        write_json(folder / "run.json", {"config": config})
    before = tree(real)
    link = tmp_path / "link"
    link.symlink_to(real)
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=f"is a symbolic link, .* --output_dir {os.path.realpath(real)}.$"):
            with staged_output(str(link), config, overwrite):
                raise AssertionError("the block ran")
    assert link.is_symlink() and tree(real) == before and sorted(os.listdir(real)) == [MARKER_FILE, "run.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]

    empty = tmp_path / "empty"
    empty.mkdir()
    to_empty = tmp_path / "to-empty"
    to_empty.symlink_to(empty)
    argv = ["--model", tiny_model_dir, "--output_dir"]
    line = assert_usage_error(capsys, partial(export_model.main, [*argv, str(to_empty)]), "is a symbolic link")
    resolved = line.rsplit("--output_dir ", 1)[1].rstrip(".")
    assert resolved == os.path.realpath(empty) and list(empty.iterdir()) == []
    export_model.main([*argv, resolved])  # the advice, followed
    assert (empty / "export.json").is_file() and to_empty.is_symlink()


def test_a_mount_point_output_dir_is_refused_and_a_failed_publish_advises_what_works(monkeypatch, tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    first, second = {"Section": {"value": 1}}, {"Section": {"value": 2}}
    ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == mount or ismount(path))
    inside = f"choose a folder inside it, e.g. --output_dir {mount / 'run'}."
    with pytest.raises(ValueError, match=f"is a mount point, .* {inside}"):
        with staged_output(str(mount), first):
            raise AssertionError("the block ran")
    assert not staging_path(str(mount)).exists()

    # One that os.path.ismount does not see (a bind mount): renaming it fails with EBUSY.
    monkeypatch.setattr(os.path, "ismount", ismount)
    with staged_output(str(mount), first) as folder:
        write_json(folder / "run.json", {"config": first})
    before = tree(mount)
    rename = Path.rename

    def busy(self, target):
        if self == mount:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(self))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", busy)
    staging = staging_path(str(mount))
    with pytest.raises(RunStopped) as stop:
        with staged_output(str(mount), second, overwrite=True) as folder:
            write_json(folder / "run.json", {"config": second})
    assert "(Device or resource busy); it is a mount point" in str(stop.value)
    assert str(stop.value).endswith(
        f"it is whole in {staging}: move it into {mount} yourself (mv {staging} {mount / 'run'}) and pass "
        f"--output_dir {mount / 'run'} from now on."
    )
    assert tree(mount) == before and (staging / "run.json").is_file() and not (staging / ".lock").exists()

    shutil.move(staging, mount / "run")  # the advice, followed: the run is there, and a rerun replaces it
    assert json.loads((mount / "run" / "run.json").read_text()) == {"config": second}
    with staged_output(str(mount / "run"), second) as folder:
        write_json(folder / "run.json", {"config": second, "rerun": True})
    assert json.loads((mount / "run" / "run.json").read_text())["rerun"] is True


@pytest.mark.parametrize("case", ["empty", "dot", "user_folder", "record_without_marker", "other_run"])
def test_every_output_dir_refusal_is_one_line_whose_advice_works(
    capsys, monkeypatch, tiny_model_dir, problems_file, tmp_path, case
):
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("keep me")
    output_dir = {"empty": "", "dot": "."}.get(case, "out")
    argv = partial(adapt_argv, tiny_model_dir, problems_file)
    if case == "user_folder":
        Path("out").mkdir()
        Path("out/notes.txt").write_text("keep me")
    elif case == "record_without_marker":
        Path("out").mkdir()
        Path("out/run.json").write_text(json.dumps({"config": {"ZeroSiamConfig": {"method": "mine"}}}))
    elif case == "other_run":
        adapt.main(argv("out", *FAST, "--method", "tent"))
    before = tree(tmp_path)
    line = assert_usage_error(capsys, partial(adapt.main, argv(output_dir, *FAST)), "--output_dir ")
    assert tree(tmp_path) == before
    if case in ("empty", "dot"):
        fix = {"empty": "--output_dir outputs/run", "dot": "--output_dir ./run"}[case]
        assert line.endswith(f"e.g. {fix}.")
        adapt.main(argv(fix.split()[1], *FAST))
    elif "pass --overwrite true" in line:
        adapt.main(argv(output_dir, *FAST, "--overwrite", "true"))
    else:  # no advice to pass --overwrite true, since it would not help
        assert_usage_error(capsys, partial(adapt.main, argv(output_dir, *FAST, "--overwrite", "true")), line[7:])
        assert tree(tmp_path) == before
    assert Path("notes.txt").read_text() == "keep me"
