"""`python -m vae_tune` is the `vae-tune` command."""

from vae_tune.cli import main

main()
