"""Imports every command module so that it registers on the app."""

from dgeo.cli import demo, evaluate, localize, sequence, synth, train, viz  # noqa: F401
