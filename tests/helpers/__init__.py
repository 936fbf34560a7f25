"""Shared test helpers: small networks, served models, the command in and out of process."""
