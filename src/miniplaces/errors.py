"""The one exception type the command line shows to users without a traceback."""


class MiniPlacesError(Exception):
    """A problem the user can fix: bad input, a missing file, a wrong option.

    The message names the culprit (file, line, value) and says what to do.
    """
