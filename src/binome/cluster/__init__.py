"""Cluster membership: create / join / leave, node identity, PKI, quorum view, witness."""
