"""Benchmarks (``graphop bench``): the local layers against baselines measured in the same run
(``layers``) and whole-model training throughput (``model``)."""
