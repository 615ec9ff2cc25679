"""The task input as a workflow sees it: read-only, and a missing key is the input's fault.

A workflow gets its task's input with every object a `TaskInput` (a dict) and every array an
`InputList` (a list), at any depth. Both are read-only: the input is the same on every attempt,
and a step that changed it would make a replay differ from the first run (ReadOnlyInputError,
also a TypeError). A missing key raises MissingInputError, which is both an InputError (a
permanent failure: the task fails at once, naming the key, instead of being retried) and a
KeyError (so `except KeyError` in a workflow still works); `.get()` answers its default as
usual. An index past the end of an array is the workflow's own IndexError.

They are plain dicts and lists to everything else: `json.dumps`, `isinstance(x, dict)`,
`dict(x)` and `copy.deepcopy(x)` (which give mutable copies) all work.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn, SupportsIndex

from appliance import errors


def of(value: Any) -> Any:
    """The input read-only: objects and arrays wrapped at every depth, scalars as they are."""
    if isinstance(value, dict) and not isinstance(value, TaskInput):
        return TaskInput(value)
    if isinstance(value, list) and not isinstance(value, InputList):
        return InputList(value)
    return value


def _read_only(*_: Any, **__: Any) -> NoReturn:
    raise errors.ReadOnlyInputError(
        "the task input is read-only (it is the same on every attempt); "
        "work on a copy: dict(task_input) or copy.deepcopy(task_input)"
    )


class TaskInput(dict[str, Any]):
    """A read-only JSON object of the task input."""

    __slots__ = ("_path",)

    def __init__(self, value: dict[str, Any], path: str = "") -> None:
        super().__init__(
            (key, _wrap(item, f"{path}.{key}" if path else key)) for key, item in value.items()
        )
        self._path = path

    def __missing__(self, key: Any) -> NoReturn:
        where = f"{self._path}.{key}" if self._path else str(key)
        known = ", ".join(sorted(map(str, self))) or "none"
        raise errors.MissingInputError(f"the task input has no {where!r} (keys here: {known})")

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {key: _plain(item) for key, item in self.items()}

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskInput, (_plain(self), self._path))

    __setitem__ = __delitem__ = _read_only
    clear = pop = popitem = setdefault = update = __ior__ = _read_only


class InputList(list[Any]):
    """A read-only JSON array of the task input."""

    __slots__ = ()

    def __init__(self, value: Iterable[Any], path: str = "") -> None:
        super().__init__(_wrap(item, f"{path}[{i}]") for i, item in enumerate(value))

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [_plain(item) for item in self]

    def __reduce__(self) -> tuple[Any, ...]:
        return (InputList, (_plain(self),))

    def __setitem__(self, index: SupportsIndex | slice, value: Any) -> NoReturn:
        _read_only()

    __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only


def _wrap(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        return TaskInput(value, path)
    if isinstance(value, list):
        return InputList(value, path)
    return value


def _plain(value: Any) -> Any:
    """A mutable deep copy with plain dicts and lists."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
