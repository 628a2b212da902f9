"""Defaults the CLI shows in `--help` before anything heavy is imported."""

DEFAULT_STORAGE = "sqlite:///vae-tune.db"
DEFAULT_SPEC = "quickstart"  # the shipped spec `vae-tune run` runs with no argument
