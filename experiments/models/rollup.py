"""Roll-ups of metric series: per bucket of steps, the points a chart must never lose.

A chart of a long series draws, per bucket, its first, lowest, highest and last point
(and where a gap starts); these rows hold exactly that at a few bucket widths, so a
chart of a million points reads a few hundred rows instead of every point.
"""

from __future__ import annotations

from django.db import models

from experiments.models.experiment import Run

# Bucket width per level (level 0 is the points themselves). Each level is 16 times the
# one below: a chart's budget always finds a level within a factor 16 of what it needs.
ROLLUP_WIDTHS: dict[int, int] = {1: 16, 2: 256, 3: 4096, 4: 65536}


class MetricRollup(models.Model):
    """One bucket of steps of one metric of one run: count, first, last, min, max and the first gap.

    Steps of bucket b at level L are [b * w, (b + 1) * w) with w = ROLLUP_WIDTHS[L].
    Maintained by metrics_write in the transaction that inserts the points.
    """

    # The unique (run, name, level, bucket) serves lookups by run: no index of its own to maintain.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="rollups", db_index=False)
    name = models.CharField(max_length=64)
    level = models.PositiveSmallIntegerField()
    bucket = models.PositiveIntegerField()
    count = models.PositiveIntegerField(help_text="Points in the bucket, gaps (NULL values) included.")
    first_step = models.PositiveIntegerField()
    first_value = models.FloatField(null=True)
    last_step = models.PositiveIntegerField()
    last_value = models.FloatField(null=True)
    # NULL while every value of the bucket is NULL (NaN/inf logged).
    min_step = models.PositiveIntegerField(null=True)
    min_value = models.FloatField(null=True)
    max_step = models.PositiveIntegerField(null=True)
    max_value = models.FloatField(null=True)
    gap_step = models.PositiveIntegerField(
        null=True, help_text="First step of the bucket whose value is NULL."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "name", "level", "bucket"], name="metric_rollup_bucket"),
        ]

    def __str__(self) -> str:
        return f"{self.name} L{self.level}#{self.bucket} ({self.count} points)"
