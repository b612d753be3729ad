"""Floor 1, specs: what the user describes as data. Model shapes, hardware profiles, clusters,
dtypes, safe YAML loading and the registry of the specs shipped with parplan."""
