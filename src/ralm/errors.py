"""Errors a user can cause. The CLI prints them without a traceback."""

from __future__ import annotations


class RalmError(Exception):
    """Base class of every error caused by user input (files, configs, requests)."""


class DataError(RalmError):
    """Malformed or inconsistent input data; the message names file, row and column."""


class ConfigError(RalmError):
    """Invalid configuration file or option."""


class CheckpointError(RalmError):
    """A checkpoint or artifact is missing, corrupted or does not match the data."""
