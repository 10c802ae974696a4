"""Tasks: Proxmox-format UPIDs, task execution with logs, and the cluster log."""
