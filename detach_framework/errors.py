"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in a spec, a path, an override or a plugin that the user can correct."""


class PluginError(UserError):
    """A plugin broke a registration rule or its component broke its contract."""
