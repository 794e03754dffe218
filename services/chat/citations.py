"""Citations: the `[n]` markers of an answer mapped to the turn's stored search results.

The model sees each context block with its `ref` (the 1-based position of the block in
the turn's search results, services.chat.prompts) and cites as `[1]`, `[2][3]` or
`[1, 4]`. A marker whose number is no search result (a footnote, a list index the model
wrote) is not a citation; a markdown link `[1](…)` is not one either. Pure functions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.chat.store import SearchRow

# `[1]`, `[1, 2]`, `[1; 2]`, never followed by `(` (a markdown link) or `:` (a reference
# definition).
MARKER = re.compile(r"\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\](?![(:])")


@dataclass(frozen=True, slots=True)
class Cited:
    marker: int  # the n of [n]
    index: int  # into the search results
    result: SearchRow


def markers(content: str) -> list[int]:
    """The marker numbers of `content` in order of first mention, each once."""
    seen: dict[int, None] = {}
    for match in MARKER.finditer(content):
        for raw in re.split(r"[,;]", match.group(1)):
            seen.setdefault(int(raw.strip()), None)
    return list(seen)


def cited(content: str, results: Sequence[SearchRow]) -> list[Cited]:
    """The search results `content` cites, in order of first mention."""
    return [Cited(n, n - 1, results[n - 1]) for n in markers(content) if 1 <= n <= len(results)]
