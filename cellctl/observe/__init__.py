"""Looking at a running daemon from outside: Prometheus metrics and a JSON health answer
on one loopback HTTP endpoint (docs/metrics.md). Figures are read at scrape time from
the counters the stages keep anyway; nothing here runs per sample."""
