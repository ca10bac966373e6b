"""The fast multiprocess metric values write prometheus-client's file format, as its collector reads it."""

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from service.metric_values import INITIAL_FILE_BYTES, fast_multiprocess_value_class


def collected(directory: Path) -> dict[tuple[str, frozenset], float]:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def value(value_class: type, typ: str, metric: str, sample: str, labels: dict[str, str], **kwargs: str):
    return value_class(typ, metric, sample, list(labels), list(labels.values()), "help", **kwargs)


def test_counter_histogram_and_gauge_values_are_collected_from_the_files(tmp_path: Path) -> None:
    value_class = fast_multiprocess_value_class(str(tmp_path))
    counter_value = value(value_class, "counter", "requests", "requests_total", {"code": "200"})
    counter_value.inc(1.0)
    counter_value.inc(2.5)
    gauge_value = value(value_class, "gauge", "info", "info", {}, multiprocess_mode="livemax")
    gauge_value.set(7.0)
    bucket = value_class("histogram", "seconds", "seconds_bucket", ["le"], ["1.0"], "help")
    total = value_class("histogram", "seconds", "seconds_sum", [], [], "help")
    bucket.inc(1.0)
    total.inc(0.5)

    pid = os.getpid()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [f"counter_{pid}.db", f"gauge_livemax_{pid}.db", f"histogram_{pid}.db"]
    )
    samples = collected(tmp_path)
    assert samples[("requests_total", frozenset({("code", "200")}))] == 3.5
    assert samples[("info", frozenset())] == 7.0
    assert samples[("seconds_bucket", frozenset({("le", "1.0")}))] == 1.0
    assert samples[("seconds_sum", frozenset())] == 0.5
    assert (counter_value.get(), gauge_value.get()) == (3.5, 7.0)


def test_values_written_by_prometheus_client_itself_are_kept(tmp_path: Path) -> None:
    path = tmp_path / f"counter_{os.getpid()}.db"
    written = MmapedDict(str(path))
    key = mmap_key("requests", "requests_total", ["code"], ["200"], "help")
    written.write_value(mmap_key("other", "other_total", [], [], "help"), 5.0, 0.0)
    written.write_value(key, 41.0, 0.0)
    written.close()

    counter_value = fast_multiprocess_value_class(str(tmp_path))(
        "counter", "requests", "requests_total", ["code"], ["200"], "help"
    )
    counter_value.inc(1.0)
    assert {k: v for k, v, _ in MmapedDict(str(path), read_mode=True).read_all_values()}[key] == 42.0


def test_a_file_that_grows_past_its_first_map_keeps_every_value(tmp_path: Path) -> None:
    value_class = fast_multiprocess_value_class(str(tmp_path))
    values = [value(value_class, "counter", "many", "many_total", {"index": str(i)}) for i in range(1500)]
    assert (tmp_path / f"counter_{os.getpid()}.db").stat().st_size > INITIAL_FILE_BYTES
    for index, each in enumerate(values):
        each.inc(float(index))
    samples = collected(tmp_path)
    assert all(samples[("many_total", frozenset({("index", str(i))}))] == i for i in range(1500))


def test_a_forked_child_counts_in_its_own_file_from_zero(tmp_path: Path) -> None:
    counter_value = value(
        fast_multiprocess_value_class(str(tmp_path)), "counter", "forked", "forked_total", {}
    )
    counter_value.inc(10.0)
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        counter_value.inc(1.0)
        os._exit(0 if counter_value.get() == 1.0 else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    files = {path.name: path for path in tmp_path.iterdir()}
    assert set(files) == {f"counter_{os.getpid()}.db", f"counter_{child}.db"}
    assert collected(tmp_path)[("forked_total", frozenset())] == 11.0
