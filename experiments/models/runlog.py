"""What is known about one run's output log: where it lies, how much it holds, malformed metric lines."""

from __future__ import annotations

from django.db import models

from experiments.models.experiment import Run


class RunLog(models.Model):
    """The stdout/stderr file of one run (rotated files beside it) and its counters."""

    run = models.OneToOneField(Run, on_delete=models.CASCADE, related_name="log")
    path = models.CharField(max_length=500, help_text="The current log file; rotated ones end in .1, .2, …")
    lines = models.PositiveBigIntegerField(default=0)
    bytes_written = models.PositiveBigIntegerField(default=0)
    rotations = models.PositiveIntegerField(
        default=0, help_text="Times the file was rotated (old lines dropped)."
    )
    malformed_lines = models.PositiveIntegerField(
        default=0, help_text="Stdout lines that looked like metric points (started with {) but were not."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"log of {self.run}"
