"""Protocol-level stand-ins for systems that cannot run here (a Windows Hyper-V host over WinRM)."""
