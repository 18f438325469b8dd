"""`make demo`: placeholder until the SemToken issue lands its demo."""

print("semedge demo: not built yet")
