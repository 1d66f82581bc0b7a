"""The Prometheus exposition of one scrape's figures: a custom collector, so counting
stays in the stages' own plain integers and the families are built only when scraped."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cellctl.engine.figures import LATENCY_BUCKETS
from cellctl.observe.figures import Figures


def _histogram_buckets(counts: tuple[int, ...]) -> list[tuple[str, float]]:
    """Per-bucket counts to Prometheus' cumulative `le` buckets (the last is +Inf)."""
    out: list[tuple[str, float]] = []
    total = 0
    for bound, n in zip((*(str(b) for b in LATENCY_BUCKETS), "+Inf"), counts, strict=True):
        total += n
        out.append((bound, float(total)))
    return out


class CellCollector(Collector):
    """Yields every cellctl_* family from `source()`, called once per scrape. A scrape
    that cannot get figures (the loop does not answer) yields only `cellctl_up 0`."""

    def __init__(self, source: Callable[[], Figures | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        f = self.source()
        up = GaugeMetricFamily("cellctl_up", "1 when the daemon's event loop answered this scrape")
        up.add_metric([], 1.0 if f is not None else 0.0)
        yield up
        if f is None:
            return
        info = InfoMetricFamily("cellctl", "cellctl version")
        info.add_metric([], {"version": f.version})
        yield info
        yield from self._devices(f)
        yield from self._outbox(f)
        yield from self._sessions(f)
        yield from self._commands(f)
        starts = GaugeMetricFamily(
            "cellctl_recent_starts",
            "starts of the daemon in the last 10 minutes (state_dir/starts.json); above 1 means restarts",
        )
        starts.add_metric([], float(f.recent_starts))
        yield starts
        reloads = CounterMetricFamily("cellctl_reloads", "configuration reloads applied")
        reloads.add_metric([], float(f.live.reloads))
        yield reloads

    def _devices(self, f: Figures) -> Iterator[Metric]:
        labels = ["device", "driver"]
        up = GaugeMetricFamily("cellctl_device_up", "1 when the device is available", labels=labels)
        polls = CounterMetricFamily("cellctl_device_polls", "readings taken", labels=["device"])
        errors = CounterMetricFamily(
            "cellctl_device_errors", "device failures by kind of reason", labels=["device", "reason"]
        )
        connects = CounterMetricFamily(
            "cellctl_device_connects", "connections opened (the first, then reconnects)", labels=["device"]
        )
        overruns = CounterMetricFamily(
            "cellctl_device_poll_overruns", "polls that took longer than the poll interval", labels=["device"]
        )
        points = GaugeMetricFamily("cellctl_device_points", "points read", labels=["device"])
        bad = GaugeMetricFamily("cellctl_device_points_bad", "points with quality bad now", labels=["device"])
        latency = HistogramMetricFamily(
            "cellctl_device_poll_duration_seconds", "time one poll of the device took", labels=["device"]
        )
        for d in f.live.devices:
            up.add_metric([d.id, d.driver], 1.0 if d.available else 0.0)
            polls.add_metric([d.id], float(d.polls))
            for reason, n in sorted(d.errors.items()):
                errors.add_metric([d.id, reason], float(n))
            connects.add_metric([d.id], float(d.connects))
            overruns.add_metric([d.id], float(d.overruns))
            points.add_metric([d.id], float(d.points))
            bad.add_metric([d.id], float(d.points_bad))
            latency.add_metric([d.id], _histogram_buckets(d.latency_counts), d.latency_sum)
        yield from (up, polls, errors, connects, overruns, points, bad, latency)

    def _outbox(self, f: Figures) -> Iterator[Metric]:
        backlog = GaugeMetricFamily("cellctl_outbox_write_backlog", "records waiting to be committed")
        backlog.add_metric([], float(f.live.writer_backlog))
        yield backlog
        s = f.outbox
        if s is None:
            return
        gauges = [
            ("cellctl_outbox_messages", "messages stored and not yet acknowledged", s.messages),
            ("cellctl_outbox_bytes", "bytes of the stored messages", s.bytes),
            ("cellctl_outbox_max_bytes", "outbox.max_bytes: past it the oldest history goes", s.max_bytes),
            ("cellctl_outbox_file_bytes", "size of outbox.sqlite and its WAL on disk", s.file_bytes),
        ]
        for name, doc, value in gauges:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(value))
            yield g
        age = GaugeMetricFamily("cellctl_outbox_oldest_age_seconds", "age of the oldest stored message")
        age.add_metric(
            [], max(0.0, f.taken_at - s.oldest_created_ms / 1000.0) if s.oldest_created_ms else 0.0
        )
        yield age
        appended = CounterMetricFamily("cellctl_outbox_appended", "messages stored")
        appended.add_metric([], float(s.appended_total))
        acked = CounterMetricFamily("cellctl_outbox_acked", "messages confirmed by the broker and removed")
        acked.add_metric([], float(s.acked_total))
        dropped = CounterMetricFamily("cellctl_outbox_dropped", "messages dropped, by reason", labels=["reason"])
        for reason, n in sorted(s.dropped_by_reason.items()):
            dropped.add_metric([reason], float(n))
        yield from (appended, acked, dropped)

    def _sessions(self, f: Figures) -> Iterator[Metric]:
        connected = GaugeMetricFamily(
            "cellctl_mqtt_connected", "1 when the session is connected", labels=["format"]
        )
        connects = CounterMetricFamily("cellctl_mqtt_connects", "successful connections", labels=["format"])
        reconnects = CounterMetricFamily(
            "cellctl_mqtt_reconnects", "successful connections after the first", labels=["format"]
        )
        published = CounterMetricFamily("cellctl_mqtt_publishes", "messages handed to the broker", labels=["format"])
        acks = CounterMetricFamily("cellctl_mqtt_acks", "stored messages the broker confirmed", labels=["format"])
        refused = CounterMetricFamily(
            "cellctl_mqtt_publish_refused", "publishes tried while not connected", labels=["format"]
        )
        dups = CounterMetricFamily(
            "cellctl_mqtt_possible_duplicates",
            "messages in flight when a connection was lost (sent again)",
            labels=["format"],
        )
        for s in f.live.sessions:
            connected.add_metric([s.fmt], 1.0 if s.connected else 0.0)
            connects.add_metric([s.fmt], float(s.connects))
            reconnects.add_metric([s.fmt], float(max(0, s.connects - 1)))
            published.add_metric([s.fmt], float(s.published))
            acks.add_metric([s.fmt], float(s.acked))
            refused.add_metric([s.fmt], float(s.refused))
            dups.add_metric([s.fmt], float(s.possible_duplicates))
        yield from (connected, connects, reconnects, published, acks, refused, dups)

    def _commands(self, f: Figures) -> Iterator[Metric]:
        c = f.live.commands
        commands = CounterMetricFamily(
            "cellctl_commands", "commands received, by outcome (accepted, or refused: reason)", labels=["outcome"]
        )
        commands.add_metric(["accepted"], float(c.accepted))
        for reason, n in sorted(c.refused.items()):
            commands.add_metric([f"refused:{reason}"], float(n))
        writes = CounterMetricFamily(
            "cellctl_command_writes", "commands run, by outcome (written: done, failed: reason, overflowed: refused for a full queue)",
            labels=["outcome"],
        )
        writes.add_metric(["written"], float(c.written))
        for reason, n in sorted(c.failed.items()):
            writes.add_metric([f"failed:{reason}"], float(n))
        writes.add_metric(["overflowed"], float(c.overflowed))
        yield from (commands, writes)
