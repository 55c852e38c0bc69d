"""Pure routing decisions over a frozen snapshot: filters, scorers, pickers, policies.

Nothing here does I/O, reads a clock or touches metrics.
"""
