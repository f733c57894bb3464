"""The one exception type that the command line turns into a one-line message."""


class NeuralCodesError(Exception):
    """A problem the user can fix (bad path, wrong layout, ...).

    The CLI prints ``neuralcodes: error: <message>`` and exits with status 2, no traceback.
    """
