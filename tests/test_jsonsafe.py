"""jsonsafe.json_safe: the one JSON sanitiser (results files, run logs, the service's answers)."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pytest
import torch

from probclip.jsonsafe import json_safe


def test_nonfinite_numbers_become_null_or_their_name():
    value = {"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": (np.float32("nan"),)}
    assert json_safe(value) == {"a": None, "b": [None, None, 1.5], "c": [None]}
    assert json_safe(value, nonfinite="text") == {"a": "nan", "b": ["inf", "-inf", 1.5], "c": ["nan"]}
    with pytest.raises(ValueError, match="nonfinite"):
        json_safe(1.0, nonfinite="zero")


def test_arrays_scalars_and_bytes_become_json_values():
    value = {1: np.array([[1.0, np.nan], [2.0, 3.0]], np.float32), "t": torch.tensor([1, 2]), "s": np.int64(7),
             "flag": np.bool_(True), "raw": b"caf\xc3\xa9 \xff", "name": np.str_("x")}
    out = json_safe(value)
    assert out == {"1": [[1.0, None], [2.0, 3.0]], "t": [1, 2], "s": 7, "flag": True, "raw": "café \ufffd",
                   "name": "x"}
    assert type(out["s"]) is int and type(out["flag"]) is bool
    json.dumps(out, allow_nan=False)


def test_other_values_are_kept_unless_a_conversion_is_given():
    when = datetime.date(2024, 5, 1)
    assert json_safe({"d": when}) == {"d": when}
    assert json_safe({"d": when, "n": [None, "x"]}, other=str) == {"d": "2024-05-01", "n": [None, "x"]}
