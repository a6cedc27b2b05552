"""Writing a benchmark's marked block into a docs file (shared by the scripts in benchmarks/)."""

from __future__ import annotations

from pathlib import Path


def write_block(path: Path, block: str, begin: str, end: str, must_exist: bool = False) -> None:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) into the file at ``path`` in
    place of the text between those markers; append it when the file has no such block, or refuse
    (``must_exist``: the block belongs at a fixed place in a hand-written document)."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    elif must_exist:
        raise SystemExit(f"{path} has no {begin} … {end} block")
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
