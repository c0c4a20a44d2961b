"""Size buckets: half-open ranges of object size, measured as sqrt(area) in original-image pixels.

COCO splits objects into three buckets (small < 32² <= medium < 96² <= large); small-object
work needs finer ones. A bucket list is given by its edges: ``[0, 8, 16, 32, 96]`` means
[0,8), [8,16), [16,32), [32,96) and [96,inf). The area is the annotation's ``area`` field, the
quantity COCOeval uses for its own small/medium/large ranges (box area for box-only datasets,
mask area for COCO), so a bucket is an extra COCOeval area range and nothing else.
"""

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_BUCKET_EDGES = (0, 8, 16, 32, 96)


def format_edge(value):
    """8 -> "8", 8.5 -> "8.5", inf -> "inf" (used in metric names such as ``AP[8,16)``)."""
    if math.isinf(value):
        return "inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class SizeBucket:
    low: float  # smallest sqrt(area) inside the bucket
    high: float  # first sqrt(area) outside it; math.inf for the last bucket

    @property
    def label(self):
        return f"[{format_edge(self.low)},{format_edge(self.high)})"

    @property
    def area_range(self):
        """[min_area, max_area] as COCOeval wants it. COCOeval's ranges are closed on both ends,
        so the upper end is the float just below high², which makes the bucket half-open."""
        upper = math.inf if math.isinf(self.high) else float(np.nextafter(self.high**2, 0.0))
        return [float(self.low) ** 2, upper]


class SizeBuckets:
    """The ordered, non-overlapping buckets defined by a list of edges."""

    def __init__(self, edges=DEFAULT_BUCKET_EDGES):
        edges = [float(e) for e in edges]
        if not edges:
            raise ValueError("bucket edges must not be empty; e.g. [0, 8, 16, 32, 96]")
        if any(not math.isfinite(e) or e < 0 for e in edges):
            raise ValueError(f"bucket edges must be finite and >= 0, got {edges}")
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"bucket edges must be strictly increasing, got {edges}")
        self.edges = tuple(edges)
        self.buckets = tuple(
            SizeBucket(low, high) for low, high in zip(edges, list(edges[1:]) + [math.inf])
        )

    def __len__(self):
        return len(self.buckets)

    def __iter__(self):
        return iter(self.buckets)

    def __repr__(self):
        return f"SizeBuckets({[format_edge(e) for e in self.edges]})"

    @property
    def labels(self):
        return [b.label for b in self.buckets]

    def assign(self, areas):
        """Bucket index of each area (-1 below the first edge), as an int array."""
        # Compare areas with squared edges (not sqrt(area) with edges) to agree bit for bit with
        # area_range; side="right": an area equal to low² belongs to the bucket starting there.
        squared_edges = np.asarray(self.edges) ** 2
        return np.searchsorted(squared_edges, np.asarray(areas, dtype=np.float64), side="right") - 1

    def count(self, areas):
        """Number of areas in each bucket, as a list aligned with ``self.buckets``."""
        index = self.assign(areas)
        return [int(np.count_nonzero(index == i)) for i in range(len(self))]
