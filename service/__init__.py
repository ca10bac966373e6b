"""Iris prediction service that watches itself: ONNX models, prediction logs and Prometheus metrics."""
