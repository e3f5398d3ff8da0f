"""The report: typed results rendered as Markdown/HTML, figures, TensorBoard, uncertainty and
the comparison of an experiment's runs. Reads results, never models."""
