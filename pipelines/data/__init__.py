"""Data preprocessing on Ray Data: reading with quarantine, cleaning operators, tokenizer training and
packing. `stage.run_clean` and `stage.run_tokenize` are the two stages; operators live in `ops/` as plain
functions on pandas batches, and `engine.py` is the only place that wires them to Ray Data."""
