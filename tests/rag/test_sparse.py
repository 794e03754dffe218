"""Tokeniser and BM25 weights: Russian word forms, codes as single terms, stable hashing."""

from __future__ import annotations

from services.rag.sparse import Bm25Encoder, stem_russian, term_index, tokenize


def test_codes_are_single_terms() -> None:
    terms = tokenize("Установка ПВ-1, разделы АР-12 и ОВ2; ГОСТ 21.501-2018, узел В1/2.")
    assert "пв-1" in terms and "ар-12" in terms and "ов2" in terms
    assert "21.501-2018" in terms and "в1/2" in terms
    assert "пв" not in terms and "1" not in terms  # a code does not match its neighbours
    # Dash variants and case fold to the same term.
    assert tokenize("пв‑1")[0] == tokenize("ПВ–1")[0] == tokenize("ПВ-1")[0] == "пв-1"


def test_russian_word_forms_meet() -> None:
    assert stem_russian("вентиляции") == stem_russian("вентиляция") == "вентиляц"
    assert tokenize("приточной установкой") == tokenize("приточная установка")
    assert tokenize("Ёлки") == tokenize("елка")
    # Hyphenated words also yield their parts.
    assert tokenize("северо-западный") == ["северо-западный", "север", "западн"]
    assert tokenize("Systems policies") == ["system", "policy"]


def test_term_index_is_a_stable_uint32() -> None:
    idx = term_index("пв-1")
    assert 0 <= idx < 2**32
    assert idx == term_index("пв-1") != term_index("пв-2")
    assert idx == 3713586510  # fixed across processes and machines


def test_document_and_query_weights() -> None:
    enc = Bm25Encoder()
    doc = enc.encode_document("ПВ-1 ПВ-1 ПВ-1 установка")
    assert doc.indices == sorted(doc.indices) and len(set(doc.indices)) == len(doc.indices)
    w = dict(zip(doc.indices, doc.values, strict=True))
    code, unit = w[term_index("пв-1")], w[term_index("установк")]
    assert code > unit > 0  # more occurrences weigh more ...
    assert code < 3 * unit  # ... but saturate
    longer = enc.encode_document("установка " + "слово " * 300)
    lw = dict(zip(longer.indices, longer.values, strict=True))
    assert lw[term_index("установк")] < unit  # length normalisation
    q = enc.encode_query("ПВ-1 пв-1 установка")
    assert q.values == [1.0, 1.0] and set(q.indices) == {term_index("пв-1"), term_index("установк")}
    assert enc.encode_query("?!").indices == []
