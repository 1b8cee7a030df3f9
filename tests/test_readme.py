"""The README's commands: the ones a reader types first, and that every one of them is run.

Every `resexp ...` and `make ...` line of the README's code blocks runs in tests/test_docs.py, in
the README's order and then the site's, in one temporary directory, so state carries over the way
it does for a reader (the demo sweep, then a second grid into the same directory, then reports over
it). The machinery and the skip list with its reasons are in tests/doc_commands.py.
"""

from __future__ import annotations

from doc_commands import readme_commands, skip_reason


def test_readme_has_the_commands_this_test_expects():
    found = readme_commands()
    codes = [c.code for c in found]
    assert codes[:2] == ["make demo", "make test"]  # the two commands, first
    assert any(c.startswith("resexp sweep configs/demo.yaml --grid optim.weight_decay") for c in codes)
    assert any(c.expected == 1 for c in found)  # a stated non-zero exit is checked too
    assert "make tensorboard" in codes  # Usage ends by opening the dashboard: checked in Chromium (test_docs)
    run = [c for c in codes if not skip_reason(c)]
    assert len(run) >= 8, run
