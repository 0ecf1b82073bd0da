"""Pipeline errors. Each names the request field it is about."""


class PipelineError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidArgument(PipelineError):
    """Bad input -> INVALID_ARGUMENT."""


class NotFound(PipelineError):
    """A referenced entity does not exist -> NOT_FOUND."""
