"""`python -m mirror.cli`."""

from . import entry

entry()
