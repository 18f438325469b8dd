"""The root command: help lists every verb; unbuilt or failing verbs exit non-zero with one line."""

from __future__ import annotations

from semedge.cli import COMMANDS


def test_help_lists_every_command_group(cli):
    res = cli("--help")
    for verb in ("compress", "eval", "train", "export", "calibrate", "run", "profile", "doctor"):
        assert verb in res.stdout
    assert set(COMMANDS) >= {"compress", "eval", "train", "export", "calibrate", "run"}
