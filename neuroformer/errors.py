"""One error type for bad input: it names the file, the field and the problem."""


class InputError(ValueError):
    """Bad user input. `problems` lists every problem found, each as (field, message)."""

    def __init__(self, file, problems):
        if isinstance(problems, tuple):
            problems = [problems]
        self.file = str(file)
        self.problems = [(field, " ".join(str(msg).split())) for field, msg in problems]  # one line each
        lines = [f"{self.file}: {field}: {msg}" for field, msg in self.problems]
        super().__init__("\n".join(lines))
