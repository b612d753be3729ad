"""Floor 5, plan: the candidate space, the array search that ranks it, trust checks, sweeps over
clusters and batches, and the launch configs of a chosen plan. No file input or output here."""
