"""The versions of Python, the platform and the packages a result was made with."""

from __future__ import annotations

import platform
from importlib import metadata

#: This package's version (``neuralcodes.__version__``; here so that what records it does not
#: import the package, whose API imports the stages).
__version__ = "0.3.0"

#: Installed packages whose versions are recorded (read from their metadata: nothing is imported).
PACKAGES: tuple[str, ...] = ("numpy", "pillow", "torch")


def versions() -> dict[str, str]:
    """``{"python": ..., "platform": ..., <package>: <version>}``; "absent" for a package that is
    not installed."""
    found = {"neuralcodes": __version__, "python": platform.python_version(),
             "platform": platform.platform()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found
