"""The one exception type for unusable user input, shared by every package.

It carries the name of the offending field so the CLI can print one line and
the REST layer can answer 4xx with ``{"field": ...}`` without parsing prose.
"""


class InputError(ValueError):
    """A user-supplied value (file, option, array) cannot be used as given."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
