"""BM25-style sparse vectors for lexical search (Russian and English, exact codes).

Weighting choice: the collection's sparse vector is configured with ``Modifier.IDF``, so
Qdrant multiplies each query term by its inverse document frequency, computed at query
time from the live collection (it stays right as documents are added and deleted, which
IDF baked into stored vectors could not without re-indexing everything). Here only the
other half of BM25 is computed:

- document side: the saturated, length-normalised term frequency
  ``tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))`` with k1 = 1.2, b = 0.75 and
  a fixed ``avg_len`` (chunks are cut to similar sizes, so the average is nearly constant;
  the default 150 terms fits 1000-character chunks);
- query side: 1.0 for every distinct term.

Qdrant's dot product of the two, with IDF applied, is the BM25 score. (The IDF is taken
over the whole collection, i.e. all users; it shifts scores only, never what a filter lets
through.)

Tokeniser: Unicode NFKC, lower case, ``ё`` → ``е``, every dash-like character → ``-``.
A term is a run of letters/digits that may be joined by ``-``, ``.``, ``/`` or ``_`` to
further runs, so codes such as «ПВ-1», «АР-12», «ГОСТ 21.501-2018»'s «21.501-2018» or
«В1/2» stay single terms ("пв-1", "ар-12"). A hyphenated word made only of letters also
yields its parts («северо-западный» → itself, «северо», «западный»); a code with digits
does not, so «ПВ-1» never matches «ПВ-2». Purely Cyrillic words are reduced by the Snowball
Russian stemmer (below) and purely Latin words by a light English plural rule, so word
forms meet («вентиляции» and «вентиляция» → «вентиляц»). Terms are hashed to uint32
indices with BLAKE2b (stable across processes and machines, unlike ``hash()``).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

K1 = 1.2
B = 0.75
DEFAULT_AVG_LEN = 150.0

_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"), "-")
_TERM = re.compile(r"[^\W_]+(?:[-./_][^\W_]+)*")
_CYRILLIC = re.compile(r"^[а-я]+$")
_LATIN = re.compile(r"^[a-z]+$")
_LETTERS_HYPHEN = re.compile(r"^[^\W\d_]+(?:-[^\W\d_]+)+$")


@dataclass(frozen=True, slots=True)
class SparseVector:
    """Qdrant-compatible sparse vector: sorted unique uint32 indices and their values."""

    indices: list[int]
    values: list[float]


# --- Snowball Russian stemmer --------------------------------------------------------

_VOWELS = set("аеиоуыэюя")
_PERFECTIVE_1 = ("вшись", "вши", "в")  # after а/я
_PERFECTIVE_2 = ("ывшись", "ившись", "ывши", "ивши", "ыв", "ив")
_REFLEXIVE = ("ся", "сь")
_ADJECTIVE = (
    "ими", "ыми", "его", "ого", "ему", "ому", "ее", "ие", "ые", "ое", "ей", "ий", "ый",
    "ой", "ем", "им", "ым", "ом", "их", "ых", "ую", "юю", "ая", "яя", "ою", "ею",
)  # fmt: skip
_PARTICIPLE_1 = ("ем", "нн", "вш", "ющ", "щ")  # after а/я
_PARTICIPLE_2 = ("ивш", "ывш", "ующ")
_VERB_1 = (
    "ете", "йте", "ешь", "нно", "ла", "на", "ли", "ем", "ло", "но", "ет", "ют", "ны", "ть",
    "й", "л", "н",
)  # fmt: skip  # after а/я
_VERB_2 = (
    "ейте", "уйте", "ила", "ыла", "ена", "ите", "или", "ыли", "ило", "ыло", "ено", "ует",
    "уют", "ены", "ить", "ыть", "ишь", "ей", "уй", "ил", "ыл", "им", "ым", "ен", "ят",
    "ит", "ыт", "ую", "ю",
)  # fmt: skip
_NOUN = (
    "иями", "ями", "ами", "иях", "ием", "иям", "ией", "ев", "ов", "ие", "ье", "еи", "ии",
    "ей", "ой", "ий", "ям", "ем", "ам", "ом", "ах", "ях", "ию", "ью", "ия", "ья", "а",
    "е", "и", "й", "о", "у", "ы", "ь", "ю", "я",
)  # fmt: skip
_SUPERLATIVE = ("ейше", "ейш")
_DERIVATIONAL = ("ость", "ост")


def _regions(word: str) -> tuple[int, int]:
    """Start of RV and of R2 (Snowball definitions)."""
    rv = len(word)
    for i, ch in enumerate(word):
        if ch in _VOWELS:
            rv = i + 1
            break
    r1 = len(word)
    for i in range(1, len(word)):
        if word[i] not in _VOWELS and word[i - 1] in _VOWELS:
            r1 = i + 1
            break
    r2 = len(word)
    for i in range(r1 + 1, len(word)):
        if word[i] not in _VOWELS and word[i - 1] in _VOWELS:
            r2 = i + 1
            break
    return rv, r2


def _strip(word: str, rv: int, endings: tuple[str, ...], after_a: bool = False) -> str | None:
    """``word`` without the first matching ending inside RV (ending ordered longest first),
    or None. With ``after_a`` the ending must follow а or я (which stays)."""
    for e in sorted(endings, key=len, reverse=True):
        if word.endswith(e) and len(word) - len(e) >= rv:
            if after_a:
                pos = len(word) - len(e) - 1
                if pos < rv or word[pos] not in "ая":
                    continue
            return word[: len(word) - len(e)]
    return None


def stem_russian(word: str) -> str:
    """The Snowball Russian stem of a lower-case word (ё already folded to е)."""
    rv, r2 = _regions(word)
    if rv >= len(word):
        return word
    # Step 1
    w = _strip(word, rv, _PERFECTIVE_2) or _strip(word, rv, _PERFECTIVE_1, after_a=True)
    if w is None:
        w = _strip(word, rv, _REFLEXIVE) or word
        adj = _strip(w, rv, _ADJECTIVE)
        if adj is not None:
            w = (
                _strip(adj, rv, _PARTICIPLE_2)
                or _strip(adj, rv, _PARTICIPLE_1, after_a=True)
                or adj
            )
        else:
            verb = _strip(w, rv, _VERB_2) or _strip(w, rv, _VERB_1, after_a=True)
            w = verb if verb is not None else (_strip(w, rv, _NOUN) or w)
    # Step 2
    if w.endswith("и") and len(w) - 1 >= rv:
        w = w[:-1]
    # Step 3
    for e in _DERIVATIONAL:
        if w.endswith(e) and len(w) - len(e) >= r2:
            w = w[: -len(e)]
            break
    # Step 4
    if w.endswith("нн") and len(w) - 1 >= rv:
        return w[:-1]
    sup = _strip(w, rv, _SUPERLATIVE)
    if sup is not None:
        w = sup
        return w[:-1] if w.endswith("нн") else w
    if w.endswith("ь") and len(w) - 1 >= rv:
        w = w[:-1]
    return w


def stem_english(word: str) -> str:
    """A light plural rule: policies → policy, systems → system, glass stays."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


# --- tokeniser and vectors -----------------------------------------------------------


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower().replace("ё", "е").translate(_DASHES)


def _term(token: str) -> str:
    if len(token) > 3:
        if _CYRILLIC.match(token):
            return stem_russian(token)
        if _LATIN.match(token):
            return stem_english(token)
    return token


def tokenize(text: str) -> list[str]:
    """Terms of a text in order (with repeats); see the module docstring."""
    terms: list[str] = []
    for m in _TERM.finditer(normalize(text)):
        token = m.group(0).strip("-./_")
        if not token or len(token) > 64:
            continue
        if _LETTERS_HYPHEN.match(token):
            terms.append(token)
            terms.extend(_term(p) for p in token.split("-") if p)
        else:
            terms.append(_term(token))
    return terms


def term_index(term: str) -> int:
    """A term's uint32 index."""
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=4).digest(), "little")


def _vector(weights: dict[int, float]) -> SparseVector:
    indices = sorted(weights)
    return SparseVector(indices, [weights[i] for i in indices])


class Bm25Encoder:
    """Sparse vectors for documents and queries (IDF is applied by Qdrant)."""

    def __init__(self, *, k1: float = K1, b: float = B, avg_len: float = DEFAULT_AVG_LEN):
        self.k1 = k1
        self.b = b
        self.avg_len = avg_len

    def encode_document(self, text: str) -> SparseVector:
        """Saturated term frequencies of a chunk's text."""
        terms = tokenize(text)
        if not terms:
            return SparseVector([], [])
        counts = Counter(term_index(t) for t in terms)
        norm = self.k1 * (1.0 - self.b + self.b * len(terms) / self.avg_len)
        return _vector({i: tf * (self.k1 + 1.0) / (tf + norm) for i, tf in counts.items()})

    def encode_documents(self, texts: list[str]) -> list[SparseVector]:
        return [self.encode_document(t) for t in texts]

    def encode_query(self, text: str) -> SparseVector:
        """1.0 for every distinct term of the query."""
        return _vector(dict.fromkeys((term_index(t) for t in tokenize(text)), 1.0))
