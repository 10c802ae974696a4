"""The Proxmox-compatible HTTPS API: method registry, validation, auth, server."""
