"""User-facing errors: one line that says what is wrong and what to do."""

from __future__ import annotations


class RoboError(ValueError):
    """An error the user can fix; the CLI prints its message on one line."""
