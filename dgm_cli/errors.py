"""The one exception type for mistakes a user can fix (bad config, missing data,
a file that is not a checkpoint). The CLI prints its message as one paragraph and
exits with status 2, without a traceback; every other exception is a bug."""


class UserError(Exception):
    """A problem with what the user asked for; its message says what and what is allowed."""
