"""Hypervisor plugins. Each knows its hypervisor's API and nothing about steps or plans."""
