"""binomed's side of replicated volumes: engine supervision, cluster records, quorum fencing."""
