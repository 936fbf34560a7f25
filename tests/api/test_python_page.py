"""docs/python.md runs as written: every ``python`` block, in order, from the repository root."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "python.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def test_the_python_page_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) >= 6
    (tmp_path / "sample_images").symlink_to(REPO / "sample_images")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "espresso" in printed and "(1000, 11, 23)" in printed and "(4, " in printed
    assert (tmp_path / "coffee_espresso.png").is_file()
    drawn = namespace["drawn"]
    assert [p.name for p in sorted(tmp_path.glob("coffee_*.png"))] == sorted(
        ["coffee_espresso.png", *(f"coffee_{i}.png" for i, _, _ in drawn)]
    )
