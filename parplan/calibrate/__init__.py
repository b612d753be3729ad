"""Floor 5, calibrate: measurement rows (parplan bench, nccl-tests logs), the fits that turn them into
a hardware profile, and predicted-against-measured comparisons. No torch here."""
