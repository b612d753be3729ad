"""Floor 6, views: what a person or a script reads. Plain-data records of estimates, text tables,
pandas frames, matplotlib figures, the Markdown report, and the one atomic file writer."""
