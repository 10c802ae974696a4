"""The deterministic HA simulator: the real CRM and LRM against a simulated cluster.

A virtual clock, a virtual etcd (quorum, leases, revisions), power and links
per member, watchdogs, fence devices, guests and replicated volumes. Golden
scenarios (`scenario`), randomized fault schedules (`randomized`) and the
invariants checked while they run (`invariants`). See docs/ha.md, section 6.
"""
