"""The one exception type for mistakes a user can make (bad path, bad config, corrupt file)."""


class FamflowError(Exception):
    """A user-facing error whose message is one sentence that names the fix."""
