"""The fast payload filter installed for Qdrant local mode answers exactly like
qdrant-client's generic one for the filters the index builds, and leaves others to it."""

from __future__ import annotations

import random
from uuid import UUID

import numpy as np
from qdrant_client import models
from qdrant_client.local import local_collection, payload_filters

from services.rag.index import _filter, _install_fast_local_filters


def test_fast_mask_equals_the_generic_one() -> None:
    _install_fast_local_filters()
    fast = local_collection.calculate_payload_mask  # type: ignore[attr-defined]
    generic = payload_filters.calculate_payload_mask
    assert fast is not generic
    rng = random.Random(1)
    payloads = [
        {
            "user_id": rng.choice(["u1", "u2", "u3"]),
            "knowledge_base_id": rng.choice(["k1", "k2", "k3", "k4"]),
            "document_id": rng.choice(["d1", "d2", "d3"]),
            "page": rng.choice([1, 2, 3, True]),
            "text": "x",
        }
        for _ in range(500)
    ]
    payloads.append({"user_id": ["u1", "u9"], "knowledge_base_id": "k1"})  # list values
    payloads.append({})  # missing keys
    ids: list[int | str | UUID] = list(range(len(payloads)))  # the point ids qdrant takes
    deleted = {"dense": np.zeros(len(payloads), dtype=bool)}
    filters = [
        _filter("u1", ["k1"]),
        _filter("u2", ["k1", "k3"], ["d2"], [2, 3]),
        _filter("u3", ["k4"], None, [1]),
        models.Filter(should=[models.FieldCondition(key="page", match=models.MatchValue(value=2))]),
        None,
    ]
    for flt in filters:
        got = fast(payloads, flt, ids, deleted)
        want = generic(payloads, flt, ids, deleted)
        assert got.dtype == bool and (got == want).all(), flt
