"""Names shared by training and serving: files on disk, the ONNX input, features and labels."""

CLASSIFIER_FILE = "classifier.onnx"
OUTLIER_DETECTOR_FILE = "outlier_detector.onnx"
METADATA_FILE = "metadata.json"
TRAINING_DATA_FILE = "training_data.csv"  # the rows training saw, for the traffic generator
INPUT_NAME = "float_input"
FEATURE_NAMES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
LABELS = ("setosa", "versicolor", "virginica")
