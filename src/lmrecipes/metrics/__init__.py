"""Metrics shipped as `evaluate` modules (a folder NAME/ holding NAME.py), so that they load offline."""

from pathlib import Path

METRICS_DIR = Path(__file__).parent


def load_metric(name: str, config_name: str | None = None):
    """A shipped `evaluate` module: accuracy, f1, precision, recall, confusion_matrix (the first four also in a
    "multilabel" configuration, on 0/1 rows), mse, mae, pearsonr, spearmanr."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / name), config_name)
