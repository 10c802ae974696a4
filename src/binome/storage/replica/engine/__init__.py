"""The volume engine process: volumes, their peer links, the NBD export, the control socket.

Depends on `core` only; `node` (binomed's side) drives it through the control socket.
"""
