"""Imports every command module so that it registers on the app."""

from dgeo.cli import demo, evaluate, localize, synth, train  # noqa: F401
