"""Running Windows servers as migration sources, reached over WinRM.

``source.py`` is the `Source` (discovery, VSS shadow copies per pass, shutdown); ``facts.py`` reads the
discovery output into SourceFacts; ``scripts.py`` holds every PowerShell body sent.
"""

from .source import WinrmSource

__all__ = ["WinrmSource"]
