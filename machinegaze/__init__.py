"""machinegaze: see what face GANs and face classifiers see."""

__version__ = "0.1.0"


class GazeError(Exception):
    """An error the user caused or can fix (bad input, wrong file). The CLI prints it as one line."""
