"""The lighting policy (schedules, presence, arbitration, energy): pure functions, no I/O.

Empty until the lighting-policy issue lands; edge and hub already depend on it as a seam.
"""
