"""Metrics shipped as `evaluate` modules (a folder NAME/ holding NAME.py), so that they load offline."""

from pathlib import Path

METRICS_DIR = Path(__file__).parent
