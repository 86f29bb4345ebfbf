"""CLI messages (issue 16, point 9): ``--debug`` after the sub-command, and ``selfsup eval`` of a path
that does not exist."""
import pytest

from selfsup.cli import build_parser, main
from selfsup.core.errors import CheckpointError


@pytest.mark.parametrize("argv", [["--debug", "list"], ["list", "--debug"], ["eval", "RUN", "--debug"],
                                  ["train", "simclr-digits", "--debug", "trainer.epochs=1"]])
def test_debug_is_accepted_before_and_after_the_subcommand(argv):
    args = build_parser().parse_args(argv)
    assert args.debug is True
    if argv[0] == "train":
        assert args.recipe == "simclr-digits" and args.overrides == ["trainer.epochs=1"]


def test_without_debug_it_is_off():
    assert build_parser().parse_args(["list"]).debug is False
    assert build_parser().parse_args(["eval", "RUN"]).debug is False


def test_eval_of_a_missing_path_says_it_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "nosuchdir"
    assert main(["eval", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"selfsup: error: {missing} does not exist (give a run directory or an exported encoder)\n"
    with pytest.raises(CheckpointError, match="does not exist"):  # --debug after the command: the traceback
        main(["eval", str(missing), "--debug"])
