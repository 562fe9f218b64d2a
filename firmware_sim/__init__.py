"""Simulated field devices speaking the real protocols; never imports our other packages."""
