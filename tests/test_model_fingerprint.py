"""The model fingerprint is computed once per model object and recomputed only when its weights change."""

from __future__ import annotations

import torch
from torch import nn

from probclip.search import model_id
from probclip.search.model_id import forget_fingerprint, model_fingerprint


def _counting(monkeypatch) -> list[int]:
    calls = [0]
    real = model_id._hash_weights

    def counted(model):
        calls[0] += 1
        return real(model)

    monkeypatch.setattr(model_id, "_hash_weights", counted)
    return calls


def test_fingerprint_is_hashed_once_per_model_object(monkeypatch):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    calls = _counting(monkeypatch)
    first = model_fingerprint(model)
    assert [model_fingerprint(model) for _ in range(5)] == [first] * 5
    assert calls[0] == 1
    other = nn.Linear(4, 3)  # another object: hashed on its own, different weights give another fingerprint
    assert model_fingerprint(other) != first and calls[0] == 2


def test_fingerprint_follows_in_place_weight_changes(monkeypatch):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    calls = _counting(monkeypatch)
    before = model_fingerprint(model)
    with torch.no_grad():
        model.weight.add_(1.0)  # an in-place write, as an optimizer step makes
    changed = model_fingerprint(model)
    assert changed != before and calls[0] == 2
    state = {k: v.clone() for k, v in nn.Linear(4, 3).state_dict().items()}
    model.load_state_dict(state)
    assert model_fingerprint(model) not in (before, changed) and calls[0] == 3
    model.weight = nn.Parameter(torch.zeros(3, 4))  # a replaced tensor
    assert calls[0] == 3 and model_fingerprint(model) != before and calls[0] == 4
    model.weight.data.fill_(2.0)  # bypasses the version counter: forget_fingerprint is the way to say so
    stale = model_fingerprint(model)
    forget_fingerprint(model)
    assert model_fingerprint(model) != stale and calls[0] == 5


def test_cached_fingerprint_equals_a_fresh_hash():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 5), nn.LayerNorm(5))
    cached = model_fingerprint(model)
    assert model_id._hash_weights(model) == cached
