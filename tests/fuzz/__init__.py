"""Fuzzing of the parsers that face the outside (Hypothesis), each on a fixed budget.

Every test takes its settings from `budget()`: a fixed number of examples,
no deadline (the machine is shared and slow), derandomized so a CI run is
reproducible, and no example database (nothing written into the checkout).
Inputs that once found a bug are kept as `@example`s and run every time.

For a longer, random search on a workstation:
    RECONCILER_FUZZ_SCALE=50 RECONCILER_FUZZ_RANDOM=1 .venv/bin/python -m pytest -q tests/fuzz
"""
