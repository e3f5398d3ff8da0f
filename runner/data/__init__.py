"""Data preparation: reading files, rendering templates in a sandbox, splitting, truncating,
encoding, checking, and mixing tasks into training batches."""
