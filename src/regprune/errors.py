"""Errors that regprune raises for bad input: each message says what to do about it."""


class RegpruneError(Exception):
    """Bad input or an unusable environment; the CLI prints the message and exits with status 2."""


class UnsupportedArchitecture(RegpruneError):
    pass


class DataUnavailable(RegpruneError):
    pass


class ModelUnavailable(RegpruneError):
    pass
