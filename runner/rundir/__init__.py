"""Run folders: creating them, what they hold (header files, inference files, fingerprints,
checkpoints), and the shared state of an experiment's runs."""
