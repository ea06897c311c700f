"""VertexGraph -> Numaflow manifests, YAML, entrypoints, Dockerfile; diagrams; validation."""
