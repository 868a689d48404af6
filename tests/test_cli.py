"""The `bnnrepro` console script: subcommands that hand their arguments to the pipeline's entry points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bnnrepro import cli
from bnnrepro.errors import EXIT_BAD_INPUT, MissingFileError, run_cli


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `bnnrepro ARGV` run in this process, as the console script runs it."""
    try:
        code = run_cli(cli.main, list(argv))
    except SystemExit as e:  # argparse: --help and usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_subcommand(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    assert out.startswith("usage: bnnrepro")
    for name, command in cli.COMMANDS.items():
        assert f"  {name} " in out and command.entry in out


def test_subcommand_help_is_the_entry_points_own(capsys):
    code, out, _ = run_main(capsys, "train", "--help")
    assert code == 0
    assert out.startswith("usage: bnnrepro train")
    assert "--config" in out and "--recipe" in out  # stages/train.py's arguments, parsed there
    assert sys.argv[0] != "bnnrepro train"  # the program name is put back


@pytest.mark.parametrize("argv", [[], ["fit"]])
def test_missing_or_unknown_subcommand_is_a_usage_error(capsys, argv):
    code, _, err = run_main(capsys, *argv)
    assert code == 2
    assert "usage: bnnrepro" in err


def test_prepare_runs_the_stage_with_the_arguments_given(capsys, tmp_path):
    out_dir = tmp_path / "prepared"
    params = tmp_path / "params.yaml"
    params.write_text("datasets:\n  mnist: {quick: false}\n")  # the stage reads its dataset's params entry
    code, out, _ = run_main(capsys, "prepare", "mnist", "--out", str(out_dir), "--raw", str(tmp_path / "raw"),
                            "--profile", "quick", "--params", str(params))
    assert code == 0
    assert "mnist: skipped in profile quick" in out
    assert "quick profile" in json.loads((out_dir / "skipped.json").read_text())["reason"]


@pytest.mark.parametrize("argv, named", [
    (["train", "run", "--config", "config/missing.yml", "--data", "data/prepared/mnist"], "missing.yml"),
    (["infer", "--model-path", "no/such/model"], "no/such/model"),
])
def test_bad_input_is_one_error_line(capsys, argv, named):
    code, _, err = run_main(capsys, *argv)
    assert code == EXIT_BAD_INPUT
    assert err.startswith("error: ") and named in err and err.count("\n") == 1


def test_every_subcommand_reaches_a_main():
    for command in cli.COMMANDS.values():
        assert callable(cli.entry_point(command.entry))


def test_stages_outside_a_checkout_are_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "REPO_ROOT", tmp_path)
    with pytest.raises(MissingFileError, match="pip install -e"):
        cli.entry_point("stages/train.py")


def test_installed_console_script_help():
    script = Path(sys.executable).parent / "bnnrepro"
    if not script.is_file():
        pytest.skip(f"{script}: console script not installed (make .venv/.installed-stamp installs it)")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in cli.COMMANDS)
