"""Floor 5, validate: predict published runs exactly as a user's estimate would, and report the error."""
