"""Lab tooling: throwaway guests, namespaces and test rigs for binome."""
