"""Floor 4, step: one training step (or one serving pass) of one layout, composed from the
strategies' shapes, collectives and state shards over the cost floor."""
