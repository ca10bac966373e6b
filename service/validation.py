"""Turn a request body into a float32 array of rows, or reject it with a reason and a clear message."""

import json
import math
from collections.abc import Callable
from enum import StrEnum
from itertools import chain

import numpy as np
import orjson

# Well inside float32 (±3.4e38): beyond about 1e37 the model's scaling overflows and its probabilities
# become NaN. No Iris measurement comes near either.
MAX_ABS_VALUE = 1e30
OUT_OF_RANGE_MESSAGE = f"values must lie within ±{MAX_ABS_VALUE:.0e}"
_ROW_TYPES = frozenset({list})
_NUMBER_TYPES = frozenset({float, int})
_PYTHON_CHECK_MAX_VALUES = 64


class Reason(StrEnum):
    """Why an input was rejected: the fixed value set of the `reason` metric label."""

    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    EMPTY_BODY = "empty_body"
    INVALID_JSON = "invalid_json"
    MISSING_DATA = "missing_data"
    WRONG_SHAPE = "wrong_shape"
    WRONG_ROW_COUNT = "wrong_row_count"
    TOO_MANY_ROWS = "too_many_rows"
    WRONG_COLUMN_COUNT = "wrong_column_count"
    NON_NUMERIC = "non_numeric"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"


STATUS_BY_REASON = {Reason.BODY_TOO_LARGE: 413, Reason.UNSUPPORTED_MEDIA_TYPE: 415}


class InvalidInput(ValueError):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status_code = STATUS_BY_REASON.get(reason, 422)


def check_content_type(content_type: str | None) -> None:
    """Accept JSON, or no content type at all (the book's clients always send JSON)."""
    if content_type is None:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise InvalidInput(
            Reason.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type must be application/json, got {media_type or 'an empty value'!r}",
        )


def _decode(body: bytes) -> object:
    if not body.strip():
        raise InvalidInput(Reason.EMPTY_BODY, 'request body is empty; send {"data": [[...]]}')
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        # NaN, Infinity and 1e999 are not JSON, but clients such as Python's json module write them:
        # name the real problem instead of a parse error.
        try:
            lenient = json.loads(body)
        except (ValueError, RecursionError):  # orjson stops nesting at 1024 levels, json may recurse out
            raise InvalidInput(Reason.INVALID_JSON, f"body is not valid JSON: {error}") from None
        if _any_number(lenient, lambda number: isinstance(number, float) and not math.isfinite(number)):
            raise InvalidInput(
                Reason.NON_FINITE, "values must be finite numbers, not NaN or Infinity"
            ) from None
        if _any_number(lenient, lambda number: abs(number) > MAX_ABS_VALUE):
            raise InvalidInput(Reason.OUT_OF_RANGE, OUT_OF_RANGE_MESSAGE) from None
        raise InvalidInput(Reason.INVALID_JSON, f"body is not valid JSON: {error}") from None


def _any_number(value: object, predicate: Callable[[float | int], bool]) -> bool:
    """Whether any number inside `value` satisfies `predicate` (iterative: any nesting depth is safe)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float | int) and not isinstance(item, bool):
            if predicate(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def parse_rows(
    body: bytes, n_features: int, max_rows: int, exact_rows: int | None = None
) -> tuple[list[list[float]], np.ndarray]:
    """Validate `{"data": [[f1, ..., fn], ...]}`; return the rows as sent (lists of numbers, for the log) and
    as a (rows, n_features) float32 array."""
    payload = _decode(body)
    if not isinstance(payload, dict) or "data" not in payload:
        raise InvalidInput(Reason.MISSING_DATA, 'body must be a JSON object with a "data" field')
    data = payload["data"]
    # set(map(...)) runs in C: the per-row and per-value Python loops below only run to name a rejection
    if not isinstance(data, list) or not set(map(type, data)) <= _ROW_TYPES:
        raise InvalidInput(Reason.WRONG_SHAPE, '"data" must be a list of rows, each a list of numbers')
    if exact_rows is not None and len(data) != exact_rows:
        raise InvalidInput(
            Reason.WRONG_ROW_COUNT,
            f'"data" must hold exactly {exact_rows} row, got {len(data)}; use /predict/batch for several',
        )
    if not data:
        raise InvalidInput(Reason.WRONG_ROW_COUNT, '"data" must hold at least one row')
    if len(data) > max_rows:
        raise InvalidInput(Reason.TOO_MANY_ROWS, f'"data" holds {len(data)} rows; the limit is {max_rows}')
    if set(map(len, data)) != {n_features}:
        for index, row in enumerate(data):
            if len(row) != n_features:
                raise InvalidInput(
                    Reason.WRONG_COLUMN_COUNT,
                    f"row {index} has {len(row)} values; each row needs {n_features}",
                )
    values = list(chain.from_iterable(data))
    # bool is an int subclass in Python and strings would be converted by numpy: reject both
    if not set(map(type, values)) <= _NUMBER_TYPES:
        for index, row in enumerate(data):
            for value in row:
                if type(value) is not float and type(value) is not int:
                    raise InvalidInput(
                        Reason.NON_NUMERIC,
                        f"row {index} holds {_describe(value)}; every value must be a number",
                    )
    # A few values are checked faster in Python than by numpy's ufuncs, which cost a microsecond a call.
    if len(values) <= _PYTHON_CHECK_MAX_VALUES and (
        all(map(math.isfinite, values)) and -MAX_ABS_VALUE <= min(values) and max(values) <= MAX_ABS_VALUE
    ):
        return data, np.array(data, dtype=np.float32)
    rows = np.array(data, dtype=np.float64)  # checked before the cast to float32, where 1e39 is inf
    if not np.isfinite(rows).all():
        raise InvalidInput(Reason.NON_FINITE, "values must be finite numbers, not NaN or Infinity")
    if (np.abs(rows) > MAX_ABS_VALUE).any():
        raise InvalidInput(Reason.OUT_OF_RANGE, OUT_OF_RANGE_MESSAGE)
    return data, rows.astype(np.float32)


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a nested list"
    return f"a {type(value).__name__}"
