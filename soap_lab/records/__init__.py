"""Results are data: run records (ids, atomic JSON, tables), their provenance, sweeps and shards, and the stored
data sets that are not training runs (Claim 1, timing studies)."""
