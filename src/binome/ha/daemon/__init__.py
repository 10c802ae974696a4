"""The HA manager inside `binomed`: the etcd-backed Env, the executor, the service loop."""
