"""Isolation: each tool call runs in its own confined OS process, served by the control plane."""
