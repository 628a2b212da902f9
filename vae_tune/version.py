"""vae-tune: hyperparameter tuning service for variational autoencoders."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vae-tune")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
