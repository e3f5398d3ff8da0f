"""Training with Lightning: the module and its loss (the objectives table), the trainer,
callbacks, memory, and the setup that builds them."""
