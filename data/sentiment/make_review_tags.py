"""Writes review_tags.jsonl.gz, the embedded multi-label set, from movie_reviews.jsonl.gz (same texts, same order):
each text's tags are its polarity (positive / negative) plus `strong` when its mean human rating is at least 2 in
absolute value (of [-4, 4]). One or two tags per text; stdlib only.

    python data/sentiment/make_review_tags.py
"""

import gzip
import json
from pathlib import Path

HERE = Path(__file__).parent
STRONG = 2.0

with gzip.open(HERE / "movie_reviews.jsonl.gz", "rt", encoding="utf-8") as source:
    rows = [json.loads(line) for line in source]
# mtime=0: the same bytes on every run (the file's hash is part of the runs' data fingerprint)
with open(HERE / "review_tags.jsonl.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as target:
    for row in rows:
        tags = [row["label"], *(["strong"] if abs(row["rating"]) >= STRONG else [])]
        target.write((json.dumps({"text": row["text"], "tags": tags}) + "\n").encode("utf-8"))
print(f"{len(rows)} rows written to {HERE / 'review_tags.jsonl.gz'}")
