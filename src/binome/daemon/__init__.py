"""binomed: the node daemon wiring store, cluster, tasks and the API together."""
