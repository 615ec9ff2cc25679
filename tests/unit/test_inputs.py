"""The task input as a workflow sees it: read-only, a missing key is bad input, plain elsewhere."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest

from appliance import errors
from appliance.engine import inputs

ORDER: dict[str, Any] = {"order": {"id": "A-7", "lines": [{"sku": "x"}]}, "note": None}


class TestTaskInput:
    def test_a_missing_key_is_bad_input_and_a_key_error(self) -> None:
        """A missing key raises MissingInputError, an InputError and a KeyError, with its path."""
        seen = inputs.of(ORDER)

        with pytest.raises(KeyError) as missing:
            seen["order"]["lines"][0]["qty"]
        assert isinstance(missing.value, errors.InputError)
        assert str(missing.value).startswith("the task input has no 'order.lines[0].qty'")
        assert "(keys here: sku)" in str(missing.value)

    @pytest.mark.parametrize(
        "change",
        [
            lambda i: i.update(note=1),
            lambda i: i.setdefault("x", 1),
            lambda i: i.pop("note"),
            lambda i: i["order"].clear(),
            lambda i: i["order"]["lines"].append(1),
            lambda i: i["order"]["lines"].sort(),
            lambda i: i["order"]["lines"][0].popitem(),
        ],
        ids=["update", "setdefault", "pop", "clear", "append", "sort", "popitem"],
    )
    def test_no_part_of_it_can_be_changed(self, change: Any) -> None:
        """Every way to change an object or an array of the input raises ReadOnlyInputError."""
        seen = inputs.of(ORDER)

        with pytest.raises(errors.ReadOnlyInputError, match="read-only"):
            change(seen)
        assert seen == ORDER

    def test_it_is_plain_json_to_everything_else(self) -> None:
        """It is a dict, encodes as JSON, pickles, and copies into mutable plain values."""
        seen = inputs.of(ORDER)
        copied = copy.deepcopy(seen)
        copied["order"]["lines"].append({"sku": "y"})

        assert isinstance(seen, dict)
        assert json.loads(json.dumps(seen)) == ORDER
        assert pickle.loads(pickle.dumps(seen)) == ORDER  # noqa: S301 - our own bytes
        assert type(copied) is dict
        assert type(copied["order"]["lines"]) is list
        assert seen.get("missing", "default") == "default"

    @pytest.mark.parametrize("value", [None, 7, "text", True], ids=repr)
    def test_scalars_are_left_as_they_are(self, value: Any) -> None:
        """An input that is not an object or an array is handed over unchanged."""
        assert inputs.of(value) is value
