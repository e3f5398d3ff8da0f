"""The model: loading (local folder, GGUF, hub id, random-tiny), the training methods table,
the forward passes scoring shares, and numeric precision."""
