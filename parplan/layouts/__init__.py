"""Floor 3, layouts: how a model is laid over a device mesh. The Layout record, the one set of
rules that says which layouts are valid, and one plug-in strategy per mesh axis."""
