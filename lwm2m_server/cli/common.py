"""What every ``tinymlaas`` command module shares."""

DEFAULT_CONFIG = "config/server.yaml"


class CliError(Exception):
    """Printed as ``tinymlaas: <message>``; exit status 1."""
