"""Files-and-folders (data-only) migration: rules, the tree walker and writer, the mirror between them.

rules.py, tree.py, codec.py and agent.py are standard-library only (they ship to the source or target
host inside the files agent); mirror.py, session.py and report.py run on the orchestrator.
"""
