"""Exceptions that name the problem and the fix."""


class OVSSConfigError(ValueError):
    """A configuration value is invalid (unknown key, empty vocabulary, ...)."""


class OVSSDataError(OSError):
    """Data on disk is missing, unreadable or laid out wrongly."""


class OVSSWeightsError(RuntimeError):
    """Model weights cannot be found or loaded."""
