"""vitx's own warning category (tests turn it into an error unless expected)."""


class VitxWarning(UserWarning):
    """A recoverable problem in vitx input or configuration (message says what was done)."""
