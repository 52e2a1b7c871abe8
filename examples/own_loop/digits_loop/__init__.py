"""A user's package with its own training loop, run by gnp-study's greedy protocol (examples/own_loop)."""
