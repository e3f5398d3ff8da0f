"""runner: declarative instruction fine-tuning, one spec file per experiment."""

__version__ = "0.1.0"
