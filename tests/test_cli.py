"""python -m otofx inspect / roundtrip, called in-process."""

import pytest

from otofx.cli import main


def test_inspect_prints_groups_pins_and_prunable_share(capsys):
    assert main(["inspect", "zoo.small:tiny_cnn", "--input-shape", "2,3,8,8"]) == 0
    out = capsys.readouterr().out
    assert "prunable share" in out and "% of FLOPs" in out
    assert "c1" in out and "pinned: reaches a graph output" in out


def test_roundtrip_shrinks_and_reports_the_difference(capsys):
    assert main(["roundtrip", "zoo.small:tiny_cnn", "--input-shape", "2,3,8,8",
                 "--fraction", "0.5", "--kwarg", "classes=4"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "FLOPs" in out and "max |small(x) - model(x)|" in out


def test_inputs_that_do_not_fit_are_a_clear_error(capsys):
    assert main(["inspect", "zoo.small:tiny_cnn", "--input-shape", "2,5,8,8"]) == 2
    err = capsys.readouterr().err
    assert "ShapeError" in err and "node 'c1'" in err and "Original traceback" not in err


def test_a_bad_factory_spec_says_what_is_expected():
    with pytest.raises(SystemExit, match="MODULE:FACTORY"):
        main(["inspect", "tiny_cnn", "--input-shape", "2,3,8,8"])
