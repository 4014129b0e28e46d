"""The one base class of the problems a user can fix.

Every such error carries a one-line message that names what is wrong (file,
line, field, id, config key, model) and what to do; the command line catches
``UserError`` once and prints that line with exit status 2, never a traceback.
"""


class UserError(Exception):
    """A problem the user can fix; its message is one line."""
