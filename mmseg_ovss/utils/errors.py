"""Exceptions that name the problem and the fix."""


class OVSSConfigError(ValueError):
    """A configuration value is invalid (unknown key, empty vocabulary, ...)."""


class OVSSDataError(OSError):
    """Data on disk is missing, unreadable or laid out wrongly."""


class OVSSWeightsError(RuntimeError):
    """Model weights cannot be found or loaded."""


def options_with_defaults(given, defaults: dict, name: str) -> dict:
    """``defaults`` updated by the config dict ``given`` (None: no change).

    A key that ``defaults`` does not have raises an OVSSConfigError naming
    the option group and the keys it takes, so a typo in a config is never
    silently ignored.
    """
    if given is not None and not isinstance(given, dict):
        raise OVSSConfigError(
            f'{name} must be a dict of options, got {given!r}')
    unknown = set(given or {}) - set(defaults)
    if unknown:
        raise OVSSConfigError(
            f'unknown {name} option(s) {sorted(unknown)}; use '
            f'{sorted(defaults)}')
    options = dict(defaults)
    options.update(given or {})
    return options
