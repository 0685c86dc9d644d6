"""System-state staging per guest OS, done on the replica's disk before it first boots."""
