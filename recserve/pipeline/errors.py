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
        """``when``: checked "before" the stage began, at its end ("after": the deadline passed before that
        end, during the stage or earlier), or at a pause point within it ("during")."""
        said = {"before": f"before the {stage} stage", "after": f"by the end of the {stage} stage",
                "during": f"by the {stage} step"}[when]
        super().__init__(f"the deadline passed {said}")
        self.stage, self.when = stage, when
