"""The object sizes of the web-like workload: a seeded, documented draw, pure.

The size distribution is SURGE's model of Web file sizes (Barford & Crovella, "Generating
representative Web workloads for network and server performance evaluation", SIGMETRICS 1998):
a lognormal body (ln bytes: mean 9.357, standard deviation 1.318; median ~11.6 kB, so most
objects are a few round trips of a fresh TCP connection) and a Pareto tail (k = 133 kB,
alpha = 1.1; heavy: a few objects carry most of the bytes). Why this one: it is the classic
published model with both a short-flow body and a heavy tail, and its parameters are in the
paper, so a reviewer can check them. How the two are joined is ours: a size drawn from the body
above k is redrawn from the tail, so the tail's share is the lognormal's own mass above k
(~3 %). Sizes are capped at `max_bytes` (a bound on a point's time: alpha = 1.1 has no finite
variance, and one 100 MB object would be the whole run), and are at least 1 byte.

The draw depends only on the seed and the count: the workload experiment seeds it with the
run's seed and repetition, not the mode, so every mode fetches the same objects (paired
comparison).
"""

from __future__ import annotations

import math
import random

BODY_MU_LN_BYTES = 9.357
BODY_SIGMA_LN_BYTES = 1.318
TAIL_K_BYTES = 133_000
TAIL_ALPHA = 1.1
DEFAULT_MAX_BYTES = 4_000_000


def object_size(rng: random.Random, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """One object's size in bytes (module docstring)."""
    size = rng.lognormvariate(BODY_MU_LN_BYTES, BODY_SIGMA_LN_BYTES)
    if size > TAIL_K_BYTES:
        # Pareto(k, alpha) by inversion: k / U^(1/alpha), U uniform on (0, 1]
        size = TAIL_K_BYTES / (1.0 - rng.random()) ** (1 / TAIL_ALPHA)
    return max(1, min(max_bytes, math.ceil(size)))


def object_sizes(seed: str | int, count: int, max_bytes: int = DEFAULT_MAX_BYTES) -> list[int]:
    """`count` object sizes, the same for the same (seed, count, max_bytes)."""
    if count < 0 or max_bytes < 1:
        raise ValueError("count must be >= 0 and max_bytes >= 1.")
    rng = random.Random(f"web-mix/{seed}")
    return [object_size(rng, max_bytes) for _ in range(count)]
