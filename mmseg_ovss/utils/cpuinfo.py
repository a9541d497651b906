"""Fields of Linux's ``/proc/cpuinfo``."""
from typing import Optional


def cpuinfo_value(*keys: str) -> Optional[str]:
    """The value (after the ``:``, stripped) of the first ``/proc/cpuinfo``
    line that starts with one of ``keys``; None where there is no such
    line or no such file (e.g. macOS or Windows)."""
    try:
        with open('/proc/cpuinfo') as handle:
            for line in handle:
                if line.startswith(keys):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None
