"""User-facing errors: each carries one line that names the input and what was expected."""


class WmkitError(ValueError):
    """Base class for errors that the CLI prints as one line (exit code 2)."""


class InvalidKeyError(WmkitError):
    """A key is missing, malformed or too short."""


class InputError(WmkitError):
    """An input (file, text, token ids, parameter) cannot be used as given."""
