"""The HA agent inside `binomed`: `HaAgent` (agent.py: its loops and the fencer), the
etcd-backed Env, the guest executor, the host-shutdown detector and the watch filter."""
