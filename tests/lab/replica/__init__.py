"""Lab tests of replicated volumes: real hosts in namespaces, real link cuts, real guests."""
