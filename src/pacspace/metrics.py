"""Prometheus text exposition (format 0.0.4) for the few numbers an operator watches. No dependencies."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.count += 1

    def render(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, n in zip(self.buckets, self.counts):
            cumulative += n
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {cumulative}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {self.total:.6f}")
        lines.append(f"{self.name}_count {self.count}")
        return "\n".join(lines)


@dataclass
class LogMetrics:
    """Counters owned by the sequencer task; read by /metrics."""

    tree_size: int = 0
    appends_total: int = 0
    checkpoints_total: int = 0
    pool_rejections_total: int = 0
    pool_depth: int = 0
    witness_failures_total: int = 0
    batch_size: Histogram = field(
        default_factory=lambda: Histogram(
            "pacspace_batch_entries",
            "Entries sequenced per checkpoint.",
            (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536),
        )
    )
    sequencing_seconds: Histogram = field(
        default_factory=lambda: Histogram(
            "pacspace_sequencing_seconds",
            "Time from a batch's first submission to its durable checkpoint.",
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
    )
    commit_seconds: Histogram = field(
        default_factory=lambda: Histogram(
            "pacspace_commit_seconds",
            "Time to hash, sign and durably commit one batch.",
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
        )
    )

    def render(self) -> str:
        simple = [
            ("pacspace_tree_size", "gauge", "Size of the latest published checkpoint.", self.tree_size),
            ("pacspace_appends_total", "counter", "Entries appended since start.", self.appends_total),
            ("pacspace_checkpoints_total", "counter", "Checkpoints signed since start.", self.checkpoints_total),
            ("pacspace_pool_depth", "gauge", "Entries waiting to be sequenced.", self.pool_depth),
            (
                "pacspace_witness_quorum_failures_total",
                "counter",
                "Checkpoints committed but not published because the witnesses' quorum was not met.",
                self.witness_failures_total,
            ),
            (
                "pacspace_pool_rejections_total",
                "counter",
                "Submissions refused because the pool was full.",
                self.pool_rejections_total,
            ),
        ]
        parts = [f"# HELP {n} {h}\n# TYPE {n} {t}\n{n} {v}" for n, t, h, v in simple]
        parts += [self.batch_size.render(), self.sequencing_seconds.render(), self.commit_seconds.render()]
        return "\n".join(parts) + "\n"
