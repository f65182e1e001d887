"""The fixed budget of the fuzzing suite (see tests/fuzz/__init__.py)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Multiplies every test's max_examples: 1 in CI, more for a search by hand.
SCALE = max(1, int(os.environ.get("RECONCILER_FUZZ_SCALE", "1") or 1))
# Derandomized unless asked otherwise: the same examples on every CI run.
RANDOM = os.environ.get("RECONCILER_FUZZ_RANDOM", "") not in ("", "0")


def budget(max_examples: int) -> settings:
    """Settings for one fuzz test: `max_examples` (times SCALE), no deadline,
    reproducible, no database, and no health check that depends on speed."""
    return settings(
        max_examples=max_examples * SCALE,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )
