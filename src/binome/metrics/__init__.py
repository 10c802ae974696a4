"""Prometheus metrics of a node (`/metrics`), read from the node's own state at scrape time.

`sources` (what the exporter reads, as protocols the daemon's graph satisfies),
`snapshot` (one scrape's reading of the node and the cluster), `families` (the metric
table and the Prometheus families built from a snapshot), `exporter` (`NodeMetrics`:
the per-node registry, the API latency histogram and its middleware, the exposition and
the optional plain-HTTP listener). No state of its own besides the histograms: every
other value is read from its owner when Prometheus asks.

Also PVE's external metric servers: `servers` (their records and write-only tokens in
etcd) and `push` (each node's push of its data to them, InfluxDB and Graphite formats).
"""
