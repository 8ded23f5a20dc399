"""User-facing errors: each carries one line that names the input and what was expected."""


class WmkitError(ValueError):
    """Base class for errors that the CLI prints as one line (exit code 2)."""


class InvalidKeyError(WmkitError):
    """A key is missing, malformed or too short."""


class InputError(WmkitError):
    """An input (file, text, token ids, parameter) cannot be used as given."""


class RequestError(Exception):
    """A bad request to the generation engine or a server: HTTP ``status`` and a one-line message
    naming the offending field (``param``)."""

    def __init__(self, message: str, param: str | None = "input", status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status
