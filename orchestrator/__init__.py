"""hvmigrate: plan, simulate and run whole-server migrations onto ESX, Hyper-V and KVM."""

__version__ = "0.1.0"
