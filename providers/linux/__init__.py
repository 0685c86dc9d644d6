"""Running Linux servers as migration sources: discovered, read and quiesced over SSH.

``source.py`` is the `Source` (discovery through the agent, disk locations for the mirror, shutdown);
``quiesce.py`` pauses and resumes writes (``services.py``, ``lvm.py``); ``mounts.py`` tells which filesystems
stay writable when nothing pauses them; ``shell.py`` runs the few commands around the copy; ``facts.py``
names disks as the playbook does; ``power.py`` takes the host down.
"""

from .source import SshSource

__all__ = ["SshSource"]
