"""One flow per command, each reading top to bottom. Only the CLI imports these."""
