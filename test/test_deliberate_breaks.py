"""tools/deliberate_breaks.py stays runnable: every break still finds its text, once, and names a test
that exists (the breaks themselves are run by hand: each one runs a real test, minutes in all)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    path = ROOT / "tools" / "deliberate_breaks.py"
    spec = importlib.util.spec_from_file_location("deliberate_breaks", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_break_finds_its_text_once_and_names_an_existing_test():
    tool = load_tool()
    assert len(tool.CASES) >= 15
    for name, case in tool.CASES.items():
        source = (ROOT / case.path).read_text()
        for old, new in case.edits:
            assert source.count(old) == 1, (name, old)
            assert new != old, name
        test_file, _, test_name = case.tests[0].partition("::")
        text = (ROOT / test_file).read_text()
        if test_name:
            assert f"def {test_name}(" in text, (name, test_name)
        else:  # a module with -k: every name the expression asks for exists there
            expression = case.tests[case.tests.index("-k") + 1]
            for part in expression.split(" or "):
                assert re.search(rf"def test_\w*{part.strip()}\w*\(", text), (name, part)
