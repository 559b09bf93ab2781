"""Tests wait for the event they need, never for a guess of how fast the machine is: every wall-clock limit in the
suite is a generous ceiling (at least ten minutes), so a loaded CI machine is slow, not red."""

from __future__ import annotations

import re

from tests.helpers import REPO_ROOT

CEILING_S = 600
LIMITS = re.compile(
    r"(?:timeout=|\.join\(|\.wait\(timeout=|(?:time|monotonic)\(\) \+ |WebDriverWait\(\w+, )(\d+(?:\.\d+)?)\b"
)


def short_limits(text: str) -> list[str]:
    """The wall-clock limits under the ceiling in a test file's ``text``."""
    return [match.group(0) for match in LIMITS.finditer(text) if float(match.group(1)) < CEILING_S]


def test_the_pattern_finds_short_limits():
    assert short_limits("worker.join(60)\nproc.communicate(timeout=30)\ndeadline = time.time() + 120") == [
        ".join(60",
        "timeout=30",
        "time() + 120",
    ]
    assert short_limits("WebDriverWait(browser, 90, poll_frequency=0.2)") == ["WebDriverWait(browser, 90"]
    assert short_limits("worker.join(1800)\nrun(timeout=900)") == []


def test_no_test_waits_on_a_short_wall_clock_limit():
    found = {
        str(path.relative_to(REPO_ROOT)): short
        for path in sorted((REPO_ROOT / "tests").rglob("*.py"))
        if path.name != "test_waits.py" and (short := short_limits(path.read_text(encoding="utf-8")))
    }
    assert found == {}, f"wait for the event with a ceiling of at least {CEILING_S} s: {found}"
