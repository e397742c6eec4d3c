"""Experiments behind the ``symvi-jax`` subcommands; each module has ``Config`` and ``run``."""
