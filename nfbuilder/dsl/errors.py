"""The one error type of the Wallaroo API."""


class WallarooParameterError(Exception):
    """Raised when an application is built wrongly; the message says where and what to do."""
