"""Input validation: every rejected input has its reason, status and message; valid input becomes float32."""

import json

import numpy as np
import pytest
from conftest import any_json
from hypothesis import given, settings
from hypothesis import strategies as st

from service.validation import InvalidInput, Reason, check_content_type, parse_rows

N_FEATURES = 4
MAX_ROWS = 1000
ROW = [5.1, 3.5, 1.4, 0.2]


def rejection(body: bytes, exact_rows: int | None = 1) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_rows(body, N_FEATURES, MAX_ROWS, exact_rows=exact_rows)
    return caught.value


def body_with(*rows: str) -> bytes:
    return ('{"data": [' + ", ".join(rows) + "]}").encode()


REJECTED_BODIES = {
    "empty body": (b"", Reason.EMPTY_BODY),
    "whitespace only body": (b" \n\t ", Reason.EMPTY_BODY),
    "invalid JSON": (b'{"data": [[1, 2, 3, 4]]', Reason.INVALID_JSON),
    "trailing garbage": (b'{"data": [[1, 2, 3, 4]]} x', Reason.INVALID_JSON),
    "bytes that are not UTF-8": (b"\xff\xfe", Reason.INVALID_JSON),
    "empty object": (b"{}", Reason.MISSING_DATA),
    "list instead of object": (b"[[1, 2, 3, 4]]", Reason.MISSING_DATA),
    "misspelled key": (b'{"dat": [[1, 2, 3, 4]]}', Reason.MISSING_DATA),
    "data is a number": (b'{"data": 1}', Reason.WRONG_SHAPE),
    "data is an object": (b'{"data": {"a": 1}}', Reason.WRONG_SHAPE),
    "data is a flat list": (b'{"data": [1, 2, 3, 4]}', Reason.WRONG_SHAPE),
    "no rows": (b'{"data": []}', Reason.WRONG_ROW_COUNT),
    "two rows for a single-row endpoint": (body_with("[1, 2, 3, 4]", "[1, 2, 3, 4]"), Reason.WRONG_ROW_COUNT),
    "3 columns": (body_with("[1, 2, 3]"), Reason.WRONG_COLUMN_COUNT),
    "5 columns": (body_with("[1, 2, 3, 4, 5]"), Reason.WRONG_COLUMN_COUNT),
    "string": (body_with('[1, 2, 3, "4"]'), Reason.NON_NUMERIC),
    "null": (body_with("[1, 2, 3, null]"), Reason.NON_NUMERIC),
    "boolean": (body_with("[1, 2, 3, true]"), Reason.NON_NUMERIC),
    "nested list": (body_with("[1, 2, 3, [4]]"), Reason.NON_NUMERIC),
    "NaN": (body_with("[1, 2, 3, NaN]"), Reason.NON_FINITE),
    "Infinity": (body_with("[1, 2, 3, Infinity]"), Reason.NON_FINITE),
    "-Infinity": (body_with("[1, 2, 3, -Infinity]"), Reason.NON_FINITE),
    "1e999 (overflows float64)": (body_with("[1, 2, 3, 1e999]"), Reason.NON_FINITE),
    "1e39 (beyond float32)": (body_with("[1, 2, 3, 1e39]"), Reason.OUT_OF_RANGE),
    "-1e39 (beyond float32)": (body_with("[-1e39, 2, 3, 4]"), Reason.OUT_OF_RANGE),
    "integer beyond float32": (body_with(f"[1, 2, 3, {10**39}]"), Reason.OUT_OF_RANGE),
    "400-digit integer": (body_with(f"[1, 2, 3, {10**400}]"), Reason.OUT_OF_RANGE),
}


@pytest.mark.parametrize(("body", "reason"), REJECTED_BODIES.values(), ids=REJECTED_BODIES.keys())
def test_rejected_body_has_its_reason_status_422_and_a_message(body: bytes, reason: Reason) -> None:
    error = rejection(body)
    assert (error.reason, error.status_code) == (reason, 422)
    assert error.message


def test_ragged_rows_are_a_wrong_column_count_naming_the_row() -> None:
    error = rejection(body_with("[1, 2, 3, 4]", "[1, 2, 3]", "[1, 2, 3, 4]"), exact_rows=None)
    assert error.reason is Reason.WRONG_COLUMN_COUNT
    assert "row 1" in error.message


def test_more_rows_than_the_limit_are_too_many_rows() -> None:
    error = rejection(body_with(*["[1, 2, 3, 4]"] * (MAX_ROWS + 1)), exact_rows=None)
    assert (error.reason, error.status_code) == (Reason.TOO_MANY_ROWS, 422)


def test_exactly_the_row_limit_is_accepted() -> None:
    _, rows = parse_rows(body_with(*["[1, 2, 3, 4]"] * MAX_ROWS), N_FEATURES, MAX_ROWS)
    assert rows.shape == (MAX_ROWS, N_FEATURES)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""],
)
def test_content_type_that_is_not_json_is_unsupported_media_type_415(content_type: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_content_type(content_type)
    assert (caught.value.reason, caught.value.status_code) == (Reason.UNSUPPORTED_MEDIA_TYPE, 415)
    assert caught.value.message


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "Application/JSON; charset=utf-8", "application/problem+json"]
)
def test_json_or_missing_content_type_is_accepted(content_type: str | None) -> None:
    check_content_type(content_type)


def test_valid_single_row_becomes_a_float32_array_of_shape_1_by_4() -> None:
    data, rows = parse_rows(body_with("[5.1, 3.5, 1.4, 0.2]"), N_FEATURES, MAX_ROWS, exact_rows=1)
    assert data == [ROW]  # as sent, for the prediction log
    assert rows.dtype == np.float32
    assert rows.shape == (1, 4)
    np.testing.assert_array_equal(rows, np.array([ROW], dtype=np.float32))


def test_valid_batch_of_integers_and_floats_becomes_a_float32_array_of_shape_n_by_4() -> None:
    data, rows = parse_rows(body_with("[1, 2, 3, 4]", "[0.5, -1e-3, 1e30, 0]"), N_FEATURES, MAX_ROWS)
    assert data == [[1, 2, 3, 4], [0.5, -1e-3, 1e30, 0]]
    assert rows.dtype == np.float32
    assert rows.shape == (2, 4)
    np.testing.assert_array_equal(rows, np.array([[1, 2, 3, 4], [0.5, -1e-3, 1e30, 0]], dtype=np.float32))


def test_deeply_nested_json_is_invalid_json() -> None:
    assert rejection(b"[" * 2_000).reason is Reason.INVALID_JSON


def test_nan_in_deeply_nested_lists_is_rejected_as_input() -> None:
    error = rejection(b'{"data": ' + b"[" * 400 + b"NaN" + b"]" * 400 + b"}")
    assert error.reason in {Reason.NON_FINITE, Reason.INVALID_JSON}


json_values = any_json(max_leaves=30)
numbers = st.integers() | st.floats(allow_nan=True, allow_infinity=True)
# Most random values are rejected early: also generate bodies that look like the real thing.
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"data": json_values}),
    st.fixed_dictionaries({"data": st.lists(st.lists(numbers | json_values, max_size=6), max_size=4)}),
    st.fixed_dictionaries(
        {"data": st.lists(st.lists(numbers, min_size=4, max_size=4), min_size=1, max_size=4)}
    ),
)


def check_parse_rows_contract(body: bytes, exact_rows: int | None) -> None:
    try:
        data, rows = parse_rows(body, N_FEATURES, MAX_ROWS, exact_rows=exact_rows)
    except InvalidInput as error:
        assert error.reason in set(Reason)
        assert isinstance(error.message, str) and error.message
        return
    assert rows.dtype == np.float32
    assert rows.ndim == 2 and rows.shape[1] == N_FEATURES
    assert 1 <= rows.shape[0] <= MAX_ROWS
    assert exact_rows is None or rows.shape[0] == exact_rows
    assert np.isfinite(rows).all()
    np.testing.assert_array_equal(rows, np.array(data, dtype=np.float64).astype(np.float32))


@settings(max_examples=300, deadline=None, database=None)
@given(value=bodies, exact_rows=st.sampled_from([None, 1]))
def test_any_json_value_is_either_finite_float32_rows_or_invalid_input(
    value: object, exact_rows: int | None
) -> None:
    check_parse_rows_contract(json.dumps(value).encode(), exact_rows)


@settings(max_examples=200, deadline=None, database=None)
@given(body=st.binary(max_size=64))
def test_any_bytes_are_either_finite_float32_rows_or_invalid_input(body: bytes) -> None:
    check_parse_rows_contract(body, None)
