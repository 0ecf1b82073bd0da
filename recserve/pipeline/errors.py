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


class NoBundle(Exception):
    """No valid bundle is loaded yet -> UNAVAILABLE."""


class DeadlineExceeded(Exception):
    """The caller's deadline passed before the pipeline finished -> DEADLINE_EXCEEDED (work stops at the
    next pause point)."""

    def __init__(self, stage: str, when: str = "before"):
        """``when``: "before" the stage began, "after" it ended (checked at its end), or "during" it (at a
        pause point within it)."""
        said = {"before": f"before the {stage} stage", "after": f"during the {stage} stage, stopped at its end",
                "during": f"during the {stage} stage, stopped within it"}[when]
        super().__init__(f"the deadline passed {said}")
        self.stage, self.when = stage, when
