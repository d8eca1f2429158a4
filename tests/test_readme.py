"""The README's asyncio and testing examples run as printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support import run_python

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(section: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.DOTALL)


@pytest.mark.parametrize("index", range(2))
def test_asyncio_examples_run(index: int) -> None:
    code = blocks("asyncio")[index]
    result = run_python(code, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the example prints what it received"


def test_testing_example_passes(pytester: pytest.Pytester) -> None:
    [code] = blocks("Testing code that uses tidings")
    pytester.makepyfile(code)
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)
