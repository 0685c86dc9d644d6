"""Running Windows servers as migration sources, reached over WinRM (transport: local: run on them).

``source.py`` is the `Source` (discovery, VSS shadow copies per pass, quiesce, shutdown); ``services.py``
stops and starts its services for the final pass; ``facts.py`` reads the discovery output into
SourceFacts; ``scripts.py`` holds every PowerShell body sent. ``transport: local`` runs the same scripts
through this machine's powershell.exe when the orchestrator runs on the source itself.
"""

from .source import WinrmSource

__all__ = ["WinrmSource"]
