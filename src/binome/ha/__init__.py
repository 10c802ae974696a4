"""High availability: the CRM (one elected manager), the LRM (one per node), fencing, simulator.

The pure logic (`manager`, `services`, `nodes`, `scheduler`, `lrm`, `crm`)
runs against the `env.Env` protocol and does no I/O itself; `sim` drives the
same code in a deterministic discrete-event simulation. See `docs/ha.md`.
"""
