"""Data, by what it serves:

    sources.py         files or a Hub dataset -> checked splits; held-out splits, seeded samples, fingerprints
    rows.py            row checks (a defect names file, row and column, or the row is dropped) and the json/csv
                       readers that name lines
    packing.py         pretraining: the corpus, tokenized and packed into fixed-length blocks, cached
    classification.py  fine-tuning: texts and labels, split, sampled and tokenized for the task
"""
