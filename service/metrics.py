"""The metric contract: every metric the service exports is declared here, with its help text and buckets
(the worker process metrics, which the gunicorn master records too, are in `service.worker_metrics`).

Children are bound once per label set so the request path never looks labels up, and histogram children
find their bucket by bisection. Histograms of many values (a batch) are filled with one numpy pass instead
of one observation per value. In multiprocess mode values are `service.metric_values`' fast ones.
"""

from bisect import bisect_left
from math import inf

import numpy as np
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.utils import floatToGoString

from service import metric_values
from service.model import Model, Predictions
from service.validation import Reason

prometheus_client.disable_created_metrics()  # `_created` series only double the series count here
metric_values.install()

REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
INFERENCE_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1)
# One-class SVM decision function: training rows score about -0.4 … 0.6, far-away rows -3 and below.
OUTLIER_SCORE_BUCKETS = (-3.0, -2.0, -1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
# model_input_feature_value's buckets are the model's own: each feature's edges near its training deciles
# (metadata.json), so the drift rules compare the served share of every bucket with the training share.

HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Below this many values a plain `observe` loop is cheaper than the numpy pass.
VECTOR_OBSERVE_MIN = 8


class BoundHistogram:
    """One histogram child; `observe` has the effect of the child's own, at a third of the cost.

    (It uses the child's bucket and sum values, which prometheus-client keeps non-cumulative.)
    """

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._bounds = list(child._upper_bounds)
        self._buckets = child._buckets
        self._sum = child._sum

    @property
    def upper_bounds(self) -> list[float]:
        return self._bounds

    def observe(self, value: float) -> None:
        # the first bucket whose upper bound is >= the value; NaN counts in no bucket, as in `observe`
        index = bisect_left(self._bounds, value)
        if value <= self._bounds[index]:
            self._buckets[index].inc(1.0)
        self._sum.inc(value)

    def observe_many(self, values: np.ndarray) -> float:
        """Same effect as `observe(v)` for every v (in float32 or float64), in one numpy pass; returns the
        values' sum."""
        if len(values) < VECTOR_OBSERVE_MIN:
            listed = values.tolist()
            for value in listed:
                self.observe(value)
            return float(sum(listed))
        bounds = np.array(self._bounds)
        counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
        for bucket, count in zip(self._buckets, counts.tolist(), strict=True):
            if count:
                bucket.inc(count)
        total = float(values.sum(dtype=np.float64))
        self._sum.inc(total)
        return total


class FileHistogram(BoundHistogram):
    """A BoundHistogram whose values are `service.metric_values`' (multiprocess mode): an observation adds
    to the two numbers in the file directly, without a method call per value."""

    __slots__ = ()

    def observe(self, value: float) -> None:
        index = bisect_left(self._bounds, value)
        if value <= self._bounds[index]:
            bucket = self._buckets[index]
            bucket.doubles[bucket.index] += 1.0
        total = self._sum
        total.doubles[total.index] += value


def child_with_buckets(histogram: Histogram, buckets: tuple[float, ...], *labelvalues: str) -> Histogram:
    """The child for `labelvalues` with its own buckets. prometheus-client builds a child from its parent's
    `_kwargs`, so every child would get the parent's buckets; the exposition and the multiprocess files
    take each child's own (its `le` labels), which lets every feature have its training deciles."""
    parent_kwargs = histogram._kwargs
    histogram._kwargs = {**parent_kwargs, "buckets": buckets}
    try:
        child = histogram.labels(*labelvalues)
    finally:
        histogram._kwargs = parent_kwargs
    if list(child._upper_bounds) != [*buckets, inf]:
        raise ValueError(f"{histogram._name}{labelvalues} was bound before with other buckets")
    return child


def bind_histogram(child: Histogram) -> BoundHistogram:
    return FileHistogram(child) if hasattr(child._sum, "doubles") else BoundHistogram(child)


class FileCounter:
    """A counter child whose value is `service.metric_values`' (multiprocess mode): `inc` adds to the number
    in the file directly, without Counter.inc's checks (amounts here are never negative) and exemplars."""

    __slots__ = ("_doubles", "_index")

    def __init__(self, child: Counter) -> None:
        self._doubles = child._value.doubles
        self._index = child._value.index

    def inc(self, amount: float = 1.0) -> None:
        self._doubles[self._index] += amount


def bind_counter(child: Counter) -> Counter | FileCounter:
    return FileCounter(child) if hasattr(child._value, "doubles") else child


class FeatureValues:
    """One feature's histogram, the two parts of its sum, x = x⁺ − x⁻, and the sum of its squares: each a
    counter that only grows.

    A histogram's `_sum` falls when a value is negative, and `rate()` takes the fall for a counter reset;
    Prometheus' advice for negative observations is to keep them apart. The window mean is
    (rate(positive part) − rate(negative part)) / rate(_count), right whatever the values' signs; the
    squares give the window's served variance, E[x²] − mean², which sets the mean's standard error when the
    inputs spread wider than in training (outliers do).
    """

    __slots__ = ("_histogram", "_positive", "_negative", "_squares")

    def __init__(
        self,
        histogram: BoundHistogram,
        positive: Counter | FileCounter,
        negative: Counter | FileCounter,
        squares: Counter | FileCounter,
    ) -> None:
        self._histogram = histogram
        self._positive = positive
        self._negative = negative
        self._squares = squares

    def observe(self, value: float) -> None:
        self._histogram.observe(value)
        self._squares.inc(value * value)
        if value > 0:
            self._positive.inc(value)
        elif value < 0:
            self._negative.inc(-value)

    def observe_many(self, values: np.ndarray) -> None:
        """`observe(v)` for every v, in numpy passes (one more only when some value is negative)."""
        total = self._histogram.observe_many(values)
        wide = values.astype(np.float64)
        self._squares.inc(float(np.dot(wide, wide)))
        if values.min() >= 0:  # most features never are: the histogram's sum is the positive part
            self._positive.inc(total)
            return
        self._positive.inc(float(values[values > 0].sum(dtype=np.float64)))
        self._negative.inc(-float(values[values < 0].sum(dtype=np.float64)))


class ModelMetrics:
    """The model metrics bound to one loaded model version."""

    def __init__(self, metrics: "ServiceMetrics", model: Model) -> None:
        version = model.version
        inference = metrics.model_inference_duration_seconds
        self.classifier_seconds = bind_histogram(inference.labels(version, "classifier"))
        self.outlier_detector_seconds = bind_histogram(inference.labels(version, "outlier_detector"))
        self.predictions_by_label = [
            bind_counter(metrics.model_predictions.labels(version, label)) for label in model.labels
        ]
        self.outliers = bind_counter(metrics.model_outliers.labels(version))
        self.outlier_score = bind_histogram(metrics.model_outlier_score.labels(version))
        feature_value = metrics.model_input_feature_value
        self.feature_values = [
            FeatureValues(
                bind_histogram(child_with_buckets(feature_value, edges, version, feature)),
                bind_counter(metrics.model_input_feature_value_positive_part.labels(version, feature)),
                bind_counter(metrics.model_input_feature_value_negative_part.labels(version, feature)),
                bind_counter(metrics.model_input_feature_value_squares.labels(version, feature)),
            )
            for feature, edges in zip(model.feature_names, model.feature_bucket_edges, strict=True)
        ]

        for feature, mean, stddev, edges, shares in zip(
            model.feature_names,
            model.training_mean,
            model.training_stddev,
            model.feature_bucket_edges,
            model.feature_bucket_training_shares,
            strict=True,
        ):
            metrics.model_feature_training_mean.labels(version, feature).set(mean)
            metrics.model_feature_training_stddev.labels(version, feature).set(stddev)
            bounds = [floatToGoString(edge) for edge in (-inf, *edges, inf)]
            for lower, upper, share in zip(bounds[:-1], bounds[1:], shares, strict=True):
                metrics.model_feature_training_bucket_share.labels(version, feature, lower, upper).set(share)
        metrics.model_training_outlier_ratio.labels(version).set(model.training_outlier_fraction)
        for label, share in zip(model.labels, model.training_predicted_label_shares, strict=True):
            metrics.model_training_predicted_label_ratio.labels(version, label).set(share)
        metrics.model_training_rows.labels(version).set(model.training_rows)
        metrics.model_info.labels(
            version, model.metadata["classifier"], model.metadata["outlier_detector"]
        ).set(1)

    def record(self, rows: np.ndarray, predictions: Predictions) -> None:
        self.classifier_seconds.observe(predictions.classifier_seconds)
        self.outlier_detector_seconds.observe(predictions.outlier_detector_seconds)
        if len(rows) < VECTOR_OBSERVE_MIN:
            feature_values = self.feature_values
            for label_index, is_outlier, score, row in zip(
                predictions.label_indices.tolist(),
                predictions.is_outlier.tolist(),
                predictions.outlier_scores.tolist(),
                rows.tolist(),
                strict=True,
            ):
                self.predictions_by_label[label_index].inc()
                if is_outlier:
                    self.outliers.inc()
                self.outlier_score.observe(score)
                for values, value in zip(feature_values, row, strict=True):
                    values.observe(value)
            return
        per_label = np.bincount(predictions.label_indices, minlength=len(self.predictions_by_label))
        for counter, count in zip(self.predictions_by_label, per_label.tolist(), strict=True):
            if count:
                counter.inc(count)
        outliers = int(predictions.is_outlier.sum())
        if outliers:
            self.outliers.inc(outliers)
        self.outlier_score.observe_many(predictions.outlier_scores)
        for column, values in enumerate(self.feature_values):
            values.observe_many(rows[:, column])


class ServiceMetrics:
    """Every metric of the service, registered in one registry (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry = prometheus_client.REGISTRY) -> None:
        self.registry = registry
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests answered, by route template (unknown paths: handler=other) and status code.",
            ["handler", "method", "status"],
            registry=registry,
        )
        self.http_request_duration_seconds = Histogram(
            "http_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its response.",
            ["handler", "method"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.model_inference_duration_seconds = Histogram(
            "model_inference_duration_seconds",
            "Time spent in one model (stage) for one request.",
            ["model_version", "stage"],
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.model_predictions = Counter(
            "model_predictions",
            "Rows predicted, by predicted label.",
            ["model_version", "predicted_label"],
            registry=registry,
        )
        self.model_outliers = Counter(
            "model_outliers",
            "Rows the outlier detector flagged (score below the threshold).",
            ["model_version"],
            registry=registry,
        )
        self.model_outlier_score = Histogram(
            "model_outlier_score",
            "Outlier detector decision function per row; below the threshold (0 by default) is an outlier.",
            ["model_version"],
            buckets=OUTLIER_SCORE_BUCKETS,
            registry=registry,
        )
        self.model_input_feature_value = Histogram(
            "model_input_feature_value",
            "Every input value by feature, in buckets near the feature's training deciles. For the window "
            "mean use the positive and negative part counters: _sum falls on negative values.",
            ["model_version", "feature"],
            buckets=(0.0,),  # placeholder: every child is bound with the model's edges (child_with_buckets)
            registry=registry,
        )
        # The sum of the values in two parts that only grow (FeatureValues says why).
        self.model_input_feature_value_positive_part = Counter(
            "model_input_feature_value_positive_part",
            "Sum of the positive input values by feature, max(x, 0): with the negative part and "
            "model_input_feature_value_count, the exact window mean.",
            ["model_version", "feature"],
            registry=registry,
        )
        self.model_input_feature_value_negative_part = Counter(
            "model_input_feature_value_negative_part",
            "Sum of the magnitudes of the negative input values by feature, max(-x, 0).",
            ["model_version", "feature"],
            registry=registry,
        )
        self.model_input_feature_value_squares = Counter(
            "model_input_feature_value_squares",
            "Sum of the squared input values by feature, x²: with the mean, the window's served variance.",
            ["model_version", "feature"],
            registry=registry,
        )
        # Gauges in multiprocess mode: every worker sets the same value, so report the live maximum
        # instead of a per-worker sum.
        self.model_feature_training_mean = Gauge(
            "model_feature_training_mean",
            "Mean of the feature over the training data (from metadata.json): the drift baseline.",
            ["model_version", "feature"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.model_feature_training_stddev = Gauge(
            "model_feature_training_stddev",
            "Standard deviation of the feature over the training data (from metadata.json).",
            ["model_version", "feature"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.model_feature_training_bucket_share = Gauge(
            "model_feature_training_bucket_share",
            "Share of the training values of the feature in the bucket (lower, upper] of "
            "model_input_feature_value, whose `le` is `upper` (from metadata.json): the distribution drift "
            "baseline.",
            ["model_version", "feature", "lower", "upper"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.model_training_outlier_ratio = Gauge(
            "model_training_outlier_ratio",
            "Share of the training rows the outlier detector flags (from metadata.json).",
            ["model_version"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.model_training_predicted_label_ratio = Gauge(
            "model_training_predicted_label_ratio",
            "Share of the training rows predicted as each label (from metadata.json): "
            "the class share baseline.",
            ["model_version", "predicted_label"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.model_training_rows = Gauge(
            "model_training_rows",
            "Number of rows the baselines were computed on (from metadata.json).",
            ["model_version"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.model_invalid_requests = Counter(
            "model_invalid_requests",
            "Requests rejected because of their input, by reason.",
            ["reason"],
            registry=registry,
        )
        self.model_info = Gauge(
            "model_info",
            "The loaded model (always 1).",
            ["model_version", "classifier", "outlier_detector"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.prediction_log_filesystem_info = Gauge(
            "prediction_log_filesystem_info",
            "The mount point of the filesystem holding the prediction log file (always 1), to find its disk "
            "among the node exporter's filesystems.",
            ["mountpoint"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self._invalid_by_reason = {reason: self.model_invalid_requests.labels(reason) for reason in Reason}
        self._request_children: dict[tuple[str, str, int], tuple[Counter | FileCounter, BoundHistogram]] = {}

    def bind_model(self, model: Model) -> ModelMetrics:
        return ModelMetrics(self, model)

    def record_invalid(self, reason: Reason) -> None:
        self._invalid_by_reason[reason].inc()

    def record_request(self, handler: str, method: str, status: int, seconds: float) -> None:
        if method not in HTTP_METHODS:  # the method is client-controlled: keep the label set bounded
            method = "other"
        key = (handler, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                bind_counter(self.http_requests.labels(handler, method, str(status))),
                bind_histogram(self.http_request_duration_seconds.labels(handler, method)),
            )
            self._request_children[key] = children
        counter, histogram = children
        counter.inc()
        histogram.observe(seconds)
