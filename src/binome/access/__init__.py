"""Access control in Proxmox VE's model: privileges, roles, users, groups, ACLs, pools,
API tokens, realms and second factors, with PVE's permission evaluation.

Pure modules (no I/O): privileges, roles, model, evaluator, secrets, tokens.
The repository owns the access keys in etcd.
"""
